"""The architecture of one DenseNet, as a frozen, validated, JSON-round-tripping dataclass.

This module is the public format of an architecture: the search samples it, the model
builder reads it, the cost model prices it, the export writes it. It imports no torch
and builds nothing; it only knows the arithmetic of the network's shape (the channel
and spatial plan), enough to reject an architecture that cannot run before any tensor
exists. Names follow Huang et al. (2017) and the d2l.ai chapter "Densely Connected
Networks": growth rate k, compression theta.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nas.errors import ConfigError, UsageError

__all__ = [
    "ArchConfig",
    "BlockPlan",
    "CONVENTIONS",
    "D2L_CHAPTER",
    "STEMS",
    "load_config_file",
    "small_densenet",
]

STEMS = ("d2l", "cifar")
# Layer conventions: "d2l", the chapter's (every conv has a bias, Xavier-uniform weights);
# "paper", Huang et al.'s DenseNet-BC as torchvision builds it (no conv bias, since a BN
# follows; Kaiming-normal conv weights, BN weight 1 and bias 0, linear bias 0).
CONVENTIONS = ("d2l", "paper")

# Bounds that keep a config sane (a typo such as growth_rate=32000 is an error, not an
# out-of-memory crash twenty minutes later).
_LIMITS = {
    "growth_rate": (1, 512),
    "convs": (1, 128),
    "blocks": (1, 8),
    "stem_channels": (1, 4096),
    "in_channels": (1, 64),
    "image_size": (1, 1024),
    "num_classes": (2, 100_000),
}


@dataclass(frozen=True)
class BlockPlan:
    """Shape of one dense block and the transition after it (if any)."""

    index: int  # 1-based, as in torchvision's "denseblock1"
    convs: int  # conv blocks in this dense block
    in_channels: int  # channels entering the block
    out_channels: int  # in_channels + convs * k
    size: int  # spatial side (pixels) inside the block
    transition_channels: int | None  # floor(theta * out_channels); None after the last block


@dataclass(frozen=True)
class ArchConfig:
    """One DenseNet. The defaults are the d2l chapter's network for Fashion-MNIST."""

    growth_rate: int = 32  # k: channels each conv block adds to the running concatenation
    convs_per_block: tuple[int, ...] = (4, 4, 4, 4)  # conv blocks per dense block
    compression: float = 0.5  # theta in (0, 1]: a transition keeps floor(theta * C) channels
    bottleneck: bool = False  # DenseNet-B: BN-ReLU-1x1 conv to 4k before each 3x3 conv
    stem: str = "d2l"  # "d2l": 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; "cifar": 3x3/1 conv
    stem_channels: int = 64  # channels out of the stem (d2l: 64; DenseNet-BC CIFAR: 2k)
    in_channels: int = 1  # image channels (Fashion-MNIST: 1)
    image_size: int = 96  # input side in pixels (d2l resizes 28 -> 96)
    num_classes: int = 10
    convention: str = "d2l"  # "d2l" (conv biases, Xavier init) or "paper" (see CONVENTIONS)
    # Per-channel mean and std of the training images in [0, 1] (nas.data.dataset): the network
    # first computes (x - mean) / std. Empty: no normalisation (the d2l chapter's input).
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self._check_normalisation()
        convs = self.convs_per_block
        if isinstance(convs, list):
            object.__setattr__(self, "convs_per_block", tuple(convs))
            convs = self.convs_per_block
        if not isinstance(convs, tuple):
            raise ConfigError(f"convs_per_block must be a list of integers, got {convs!r}")
        lo, hi = _LIMITS["blocks"]
        if not lo <= len(convs) <= hi:
            raise ConfigError(f"convs_per_block must have {lo} to {hi} blocks, got {len(convs)}")
        for i, c in enumerate(convs):
            _check_int(f"convs_per_block[{i}]", c, *_LIMITS["convs"])
        _check_int("growth_rate", self.growth_rate, *_LIMITS["growth_rate"])
        _check_int("stem_channels", self.stem_channels, *_LIMITS["stem_channels"])
        _check_int("in_channels", self.in_channels, *_LIMITS["in_channels"])
        _check_int("image_size", self.image_size, *_LIMITS["image_size"])
        _check_int("num_classes", self.num_classes, *_LIMITS["num_classes"])
        theta = self.compression
        if isinstance(theta, bool) or not isinstance(theta, (int, float)):
            raise ConfigError(f"compression must be a number in (0, 1], got {theta!r}")
        if not (math.isfinite(theta) and 0.0 < theta <= 1.0):
            raise ConfigError(f"compression must be in (0, 1], got {theta!r}")
        object.__setattr__(self, "compression", float(theta))
        if not isinstance(self.bottleneck, bool):
            raise ConfigError(f"bottleneck must be true or false, got {self.bottleneck!r}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {', '.join(STEMS)}; got {self.stem!r}")
        if self.convention not in CONVENTIONS:
            raise ConfigError(
                f"convention must be one of {', '.join(CONVENTIONS)}; got {self.convention!r}"
            )
        self.plan()  # raises ConfigError if the network cannot run

    def _check_normalisation(self) -> None:
        for name in ("input_mean", "input_std"):
            v = getattr(self, name)
            if isinstance(v, list):
                v = tuple(v)
            if not isinstance(v, tuple) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in v
            ):
                raise ConfigError(f"{name} must be a list of numbers, got {v!r}")
            if v and len(v) != self.in_channels:
                raise ConfigError(f"{name} has {len(v)} values for in_channels {self.in_channels}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if len(self.input_mean) != len(self.input_std):
            raise ConfigError("input_mean and input_std must both be given, or neither")
        if any(x <= 0 for x in self.input_std):
            raise ConfigError(f"input_std must be positive, got {list(self.input_std)}")

    # -- shape arithmetic -------------------------------------------------------------

    def stem_output_size(self) -> int:
        """Spatial side after the stem."""
        if self.stem == "d2l":
            s = (self.image_size - 1) // 2 + 1  # 7x7 conv, stride 2, padding 3
            return (s - 1) // 2 + 1  # 3x3 max-pool, stride 2, padding 1
        return self.image_size  # 3x3 conv, stride 1, padding 1

    def plan(self) -> list[BlockPlan]:
        """Channels and spatial size of every dense block; raises ConfigError if impossible."""
        blocks: list[BlockPlan] = []
        channels, size = self.stem_channels, self.stem_output_size()
        last = len(self.convs_per_block)
        for i, convs in enumerate(self.convs_per_block, start=1):
            if size < 1:
                raise ConfigError(
                    f"image_size {self.image_size} is too small: the spatial size reaches 0 "
                    f"before dense block {i} of {last} (each transition halves it)"
                )
            out = channels + convs * self.growth_rate
            trans = None if i == last else transition_channels(out, self.compression)
            if trans is not None and trans < 1:
                raise ConfigError(
                    f"transition {i} would keep floor({self.compression} * {out}) = 0 channels; "
                    "raise compression or growth_rate"
                )
            blocks.append(BlockPlan(i, convs, channels, out, size, trans))
            if trans is not None:
                channels, size = trans, size // 2  # 1x1 conv, then 2x2 average pool
        return blocks

    @property
    def final_channels(self) -> int:
        """Channels entering the classifier head."""
        return self.plan()[-1].out_channels

    # -- JSON -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["convs_per_block"] = list(self.convs_per_block)
        d["input_mean"], d["input_std"] = list(self.input_mean), list(self.input_std)
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Any) -> ArchConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"an architecture must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown architecture key(s): {', '.join(map(str, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**d)
        except TypeError as e:  # defensive: should not happen after the key check
            raise ConfigError(str(e)) from None

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ConfigError(f"not valid JSON: {e}") from None
        return cls.from_dict(d)

    def describe(self) -> str:
        """Short human form, e.g. 'k=32 convs=4-4-4-4 theta=0.5' (+ ' bottleneck')."""
        b = " bottleneck" if self.bottleneck else ""
        convs = "-".join(map(str, self.convs_per_block))
        return f"k={self.growth_rate} convs={convs} theta={self.compression:g}{b}"


def transition_channels(channels: int, compression: float) -> int:
    """floor(theta * C), robust to binary rounding (0.29 * 100 must give 29, not 28)."""
    return math.floor(compression * channels + 1e-9)


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value}")


# The network of the d2l.ai chapter "Densely Connected Networks" (PyTorch version).
D2L_CHAPTER = ArchConfig()


def small_densenet(image_size: int = 28) -> ArchConfig:
    """A DenseNet-BC small enough for quick checks on a CPU (k=8, two blocks of two
    layers): nas.doctor's and the unit tests'."""
    return ArchConfig(
        growth_rate=8,
        convs_per_block=(2, 2),
        compression=0.5,
        bottleneck=True,
        stem="cifar",
        stem_channels=16,
        image_size=image_size,
    )


def load_config_file(path: str | Path) -> ArchConfig:
    """An architecture JSON, or a `nas.export` file (its "config" member)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
        raise UsageError(f"{p} is not valid JSON: {e}") from None
    if isinstance(data, dict) and "config" in data and "schema" in data:
        data = data["config"]
    try:
        return ArchConfig.from_dict(data)
    except ConfigError as e:
        raise UsageError(f"{p}: {e}") from None
