"""nas.arch.model: the builder reproduces the d2l chapter and builds every sampled config."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from d2l_reference import d2l_densenet
from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.arch.model import build_model, count_params
from nas.arch.space import PRESETS, sample


def leaf_layers(model: nn.Module) -> list[tuple[str, tuple]]:
    """(type, parameter shapes, key hyper-parameters) of every leaf module, in order."""
    out = []
    for m in model.modules():
        if list(m.children()):
            continue
        hyper = tuple(getattr(m, a) for a in ("kernel_size", "stride", "padding") if hasattr(m, a))
        shapes = tuple(tuple(p.shape) for p in m.parameters(recurse=False))
        out.append((type(m).__name__, shapes, hyper))
    return out


def test_d2l_chapter_layer_for_layer() -> None:
    ours, theirs = build_model(D2L_CHAPTER), d2l_densenet()
    assert count_params(ours) == count_params(theirs) == 758_226
    assert leaf_layers(ours) == leaf_layers(theirs)


def test_d2l_chapter_same_function_with_same_weights() -> None:
    ours, theirs = build_model(D2L_CHAPTER).eval(), d2l_densenet().eval()
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    x = torch.randn(3, 1, 96, 96)
    torch.testing.assert_close(ours(x), theirs(x))


def sampled_configs(n: int) -> list[ArchConfig]:
    out = []
    for space in PRESETS.values():
        sampler = optuna.samplers.RandomSampler(seed=1)
        study = optuna.create_study(sampler=sampler)
        for _ in range(n):
            trial = study.ask()
            out.append(sample(trial, space))
            study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("config", sampled_configs(6), ids=lambda c: c.describe())
def test_sampled_configs_build_and_run(config: ArchConfig) -> None:
    model = build_model(config)
    x = torch.rand(2, config.in_channels, config.image_size, config.image_size)
    y = model(x)
    assert y.shape == (2, config.num_classes)
    assert torch.isfinite(y).all()
    y.sum().backward()  # trains: gradients reach the first conv
    first = model.features.stem[0]
    assert first.weight.grad is not None and torch.isfinite(first.weight.grad).all()


def test_bottleneck_layers_and_names() -> None:
    c = ArchConfig(
        growth_rate=12,
        convs_per_block=(2, 3),
        bottleneck=True,
        stem="cifar",
        stem_channels=24,
        image_size=28,
    )
    model = build_model(c)
    names = [n for n, _ in model.features.named_children()]
    assert names == ["stem", "denseblock1", "transition1", "denseblock2"]
    layer = model.features.denseblock1.net[0]
    assert layer[0][2].out_channels == 48 and layer[1][2].out_channels == 12  # 4k then k


@pytest.mark.parametrize(
    ("depth", "k", "millions"),
    [(100, 12, 0.8), (250, 24, 15.3), (190, 40, 25.6)],  # Huang et al. 2017, Table 2
)
def test_cifar_convention_is_densenet_bc_as_published(depth: int, k: int, millions: float):
    """DenseNet-BC on 3-channel 32x32 CIFAR-10: 3 blocks of (L - 4) / 6 bottleneck layers,
    a 2k-channel 3x3 stem, theta 0.5; the parameter counts the paper prints."""
    n = (depth - 4) // 6
    config = ArchConfig(
        growth_rate=k,
        convs_per_block=(n, n, n),
        compression=0.5,
        bottleneck=True,
        stem="cifar",
        stem_channels=2 * k,
        in_channels=3,
        image_size=32,
        convention="paper",
    )
    model = build_model(config)
    assert round(count_params(model) / 1e6, 1) == millions
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    # Kaiming-normal (fan_in, gain sqrt 2): std = sqrt(2 / fan_in), checked on the stem
    w = convs[0].weight
    fan_in = w[0].numel()
    assert w.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)


def test_presets_use_their_conventions() -> None:
    cifar, d2l = PRESETS["cifar"], PRESETS["d2l"]
    assert cifar.config(12, (2, 2, 2), 0.5).convention == "paper"
    assert d2l.config(32, (4, 4, 4, 4), 0.5) == D2L_CHAPTER  # the chapter, exactly


def test_the_network_normalises_its_input_with_the_data_statistics() -> None:
    """(x - mean) / std per channel, first: equal in float64 to the same weights fed the
    normalised input; not a state_dict entry (it comes from the config)."""
    from dataclasses import replace

    from nas.arch.config import small_densenet

    plain = replace(small_densenet(16), in_channels=3)
    normed = replace(plain, input_mean=(0.5, 0.25, 0.125), input_std=(0.25, 0.5, 2.0))
    a, b = build_model(normed, seed=0).double().eval(), build_model(plain, seed=0).double().eval()
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(normed.input_mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(normed.input_std, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(a(x), b((x - mean) / std), rtol=0, atol=0)
    assert not torch.equal(a(x), b(x))
