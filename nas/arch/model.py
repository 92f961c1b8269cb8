"""Build a DenseNet (torch.nn.Module) from an ArchConfig, and nothing else.

The layers are those of the d2l.ai chapter "Densely Connected Networks": pre-activation
conv blocks (BN, ReLU, conv), dense blocks that concatenate every block's output onto
their input, transitions (BN, ReLU, 1x1 conv, 2x2 average pool), and a head of BN,
ReLU, global average pool and a linear layer. With the default ArchConfig the model is
the chapter's network layer for layer (same modules, same order, same parameter count,
conv biases and Xavier-uniform init included). With `convention="paper"` (the cifar
preset) the layers are Huang et al.'s DenseNet-BC as torchvision builds it: no conv
bias, Kaiming-normal init. Module names follow torchvision's densenet.py (denseblock1,
transition1, ...).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import nn

from nas.arch.config import ArchConfig

__all__ = ["DenseBlock", "DenseNet", "build_model", "count_params"]


def conv_block(in_channels: int, out_channels: int, kernel_size: int, bias: bool) -> nn.Sequential:
    """Pre-activation conv: BN, ReLU, conv (d2l's conv_block, with a size-preserving pad)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
    )


def dense_layer(in_channels: int, k: int, bottleneck: bool, bias: bool) -> nn.Sequential:
    """One dense layer: a 3x3 conv block adding k channels; DenseNet-B puts a 1x1 to 4k first."""
    if not bottleneck:
        return conv_block(in_channels, k, 3, bias)
    return nn.Sequential(conv_block(in_channels, 4 * k, 1, bias), conv_block(4 * k, k, 3, bias))


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and all earlier outputs."""

    def __init__(
        self, num_convs: int, in_channels: int, k: int, bottleneck: bool, bias: bool = True
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            *(dense_layer(in_channels + i * k, k, bottleneck, bias) for i in range(num_convs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = torch.cat((x, layer(x)), dim=1)  # (B, C + i*k, H, W)
        return x


def transition(in_channels: int, out_channels: int, bias: bool) -> nn.Sequential:
    """BN, ReLU, 1x1 conv to floor(theta * C) channels, 2x2 average pool (halves H and W)."""
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


def stem(config: ArchConfig) -> nn.Sequential:
    bias = config.convention == "d2l"
    if config.stem == "d2l":  # d2l's b1
        return nn.Sequential(
            nn.Conv2d(config.in_channels, config.stem_channels, 7, stride=2, padding=3, bias=bias),
            nn.BatchNorm2d(config.stem_channels),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    # DenseNet-BC for CIFAR (Huang et al. 2017, sec. 3): one 3x3 conv, stride 1.
    return nn.Sequential(
        nn.Conv2d(config.in_channels, config.stem_channels, 3, padding=1, bias=bias)
    )


class DenseNet(nn.Module):
    """features (stem, dense blocks, transitions) -> head (BN, ReLU, pool, linear)."""

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.config = config
        bias = config.convention == "d2l"
        layers: OrderedDict[str, nn.Module] = OrderedDict(stem=stem(config))
        for block in config.plan():
            layers[f"denseblock{block.index}"] = DenseBlock(
                block.convs, block.in_channels, config.growth_rate, config.bottleneck, bias
            )
            if block.transition_channels is not None:
                layers[f"transition{block.index}"] = transition(
                    block.out_channels, block.transition_channels, bias
                )
        self.features = nn.Sequential(layers)
        c = config.final_channels
        self.head = nn.Sequential(
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
            nn.Linear(c, config.num_classes),
        )
        self.apply(_init_d2l if config.convention == "d2l" else _init_paper)
        # the data's per-channel statistics: constants of the network, not weights (no
        # state_dict entry), so that the exported program normalises its own input
        mean, std = config.input_mean, config.input_std
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean).view(shape) if mean else None, False)
        self.register_buffer("std", torch.tensor(std).view(shape) if std else None, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.head(self.features(x))  # (B, C, H, W) -> (B, num_classes)


def _init_d2l(module: nn.Module) -> None:
    """d2l.init_cnn: Xavier-uniform weights for convs and linears, default biases."""
    if type(module) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(module.weight)


def _init_paper(module: nn.Module) -> None:
    """torchvision's densenet.py: Kaiming-normal convs, BN (1, 0), linear bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1)
        nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.Linear):
        nn.init.constant_(module.bias, 0)


# Weights are drawn from the process-wide CPU generator; with several trials at once
# (nas.search --concurrency) seeding and drawing must not interleave between threads.
_INIT_LOCK = threading.Lock()


def build_model(config: ArchConfig, seed: int | None = None) -> DenseNet:
    """The network of `config` on the CPU; with `seed`, its initial weights follow from the
    seed alone (the CPU generator is seeded and drawn under one lock, so threads building
    at the same time do not change each other's weights)."""
    with _INIT_LOCK:
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)  # CPU only: no CUDA state
        return DenseNet(config)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
