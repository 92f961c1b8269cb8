"""The search space: which DenseNets a study may sample, and the one function that samples.

A space has searched parts (growth rate k, convs per dense block, compression theta,
each a range) and fixed parts (number of blocks, stem, stem width, image size,
bottleneck) set by a preset and overridable from a TOML file or the CLI. `sample` is
the only place in the project that calls `trial.suggest_*`; Optuna parameter names
are the ArchConfig field names (`convs_per_block_1` ... for the per-block list).

Presets:
  d2l    the d2l chapter's layout: 4 blocks, d2l stem (64 ch), 96x96 input, no bottleneck.
         Contains the chapter's own network (k=32, 4-4-4-4, theta=0.5).
  cifar  DenseNet-BC for small images: 3 blocks, 3x3 stem (2k ch), bottleneck, the data's
         own image size (28 for Fashion-MNIST),
         the paper's layers (no conv bias, Kaiming init: nas.arch.config.CONVENTIONS).
  tiny   the cifar layout cut down for a CPU (k 8..16, 1..4 convs per block): demos.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import optuna

from nas.arch.config import D2L_CHAPTER, STEMS, ArchConfig
from nas.errors import ConfigError

__all__ = [
    "PRESETS",
    "SearchSpace",
    "load_space_file",
    "parse_range",
    "reference_params",
    "sample",
]


def _on_grid(x: float, step: float) -> bool:
    q = x / step
    return math.isclose(q, round(q), abs_tol=1e-9)


def _check_range(name: str, r: Any, integer: bool, n: int) -> None:
    kind = "integers" if integer else "numbers"
    if not isinstance(r, tuple) or len(r) != n:
        shape = "[low, high, step]" if n == 3 else "[low, high]"
        raise ConfigError(f"{name} must be {shape} ({kind}), got {r!r}")
    for v in r:
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            raise ConfigError(f"{name} must hold {kind}, got {list(r)!r}")
        if not math.isfinite(v):
            raise ConfigError(f"{name} must hold finite numbers, got {list(r)!r}")
    low, high = r[0], r[1]
    if low > high:
        raise ConfigError(f"{name} range has low {low} > high {high}")
    if n == 3:
        step = r[2]
        if step <= 0:
            raise ConfigError(f"{name} step must be positive, got {step}")
        if not _on_grid(high - low, step):
            raise ConfigError(f"{name}: high - low ({high} - {low}) must be a multiple of {step}")


@dataclass(frozen=True)
class SearchSpace:
    preset: str
    growth_rate: tuple[int, int, int]  # k: (low, high, step)
    convs_per_block: tuple[int, int]  # conv blocks in each dense block: (low, high)
    compression: tuple[float, float, float]  # theta: (low, high, step)
    num_blocks: int
    stem: str
    stem_channels: int  # 0 means 2k (DenseNet-BC's CIFAR stem)
    image_size: int
    bottleneck: bool
    convention: str = "d2l"  # layer convention of the networks (nas.arch.config.CONVENTIONS)
    # from the data (for_data): image channels, classes, per-channel mean and std
    in_channels: int = 1
    num_classes: int = 10
    input_mean: tuple[float, ...] = ()
    input_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        k, c, t = self.growth_rate, self.convs_per_block, self.compression
        _check_range("growth_rate", k, integer=True, n=3)
        _check_range("convs_per_block", c, integer=True, n=2)
        _check_range("compression", t, integer=False, n=3)
        if not (0 < t[0] and t[1] <= 1):
            raise ConfigError(f"compression range must lie in (0, 1], got {list(t)}")
        for name in ("num_blocks", "stem_channels", "image_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"space {name} must be a non-negative integer, got {v!r}")
        if not 1 <= self.num_blocks <= 8:
            raise ConfigError(f"space num_blocks must be in [1, 8], got {self.num_blocks}")
        if self.stem not in STEMS:
            raise ConfigError(f"space stem must be one of {', '.join(STEMS)}; got {self.stem!r}")
        if not isinstance(self.bottleneck, bool):
            raise ConfigError(f"space bottleneck must be true or false, got {self.bottleneck!r}")
        try:
            self.corners()
        except ConfigError as e:
            raise ConfigError(
                f"search space {self.preset!r} admits a broken network: {e}"
            ) from None

    def for_data(self, input_spec: dict[str, Any], side: int | None) -> SearchSpace:
        """This space for one dataset: its channels, classes and normalisation
        (nas.data.dataset.Dataset.input_spec), and, given a `side`, that image size."""
        size = {"image_size": side} if side else {}
        return self.override({**input_spec, **size}, "the data")

    def corners(self) -> tuple[ArchConfig, ArchConfig]:
        """The smallest and the largest network of the space: channels, parameters and MACs
        all grow with k, convs and theta, so these two bound every config."""
        k, c, t, n = self.growth_rate, self.convs_per_block, self.compression, self.num_blocks
        return self.config(k[0], (c[0],) * n, t[0]), self.config(k[1], (c[1],) * n, t[1])

    def middle(self) -> ArchConfig:
        """A network from the middle of each range (for estimates)."""
        k, c, t = self.growth_rate, self.convs_per_block, self.compression
        mid_k = k[0] + (k[1] - k[0]) // (2 * k[2]) * k[2]
        mid_t = t[0] + round((t[1] - t[0]) / (2 * t[2])) * t[2]
        return self.config(mid_k, ((c[0] + c[1]) // 2,) * self.num_blocks, mid_t)

    def config(self, k: int, convs: tuple[int, ...], theta: float) -> ArchConfig:
        """The architecture for one point of the space."""
        return ArchConfig(
            growth_rate=k,
            convs_per_block=convs,
            compression=theta,
            bottleneck=self.bottleneck,
            stem=self.stem,
            stem_channels=self.stem_channels or 2 * k,
            image_size=self.image_size,
            convention=self.convention,
            in_channels=self.in_channels,
            num_classes=self.num_classes,
            input_mean=self.input_mean,
            input_std=self.input_std,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("growth_rate", "convs_per_block", "compression", "input_mean", "input_std"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        """Inverse of to_dict (a study's stored space)."""
        ranges = ("growth_rate", "convs_per_block", "compression", "input_mean", "input_std")
        return cls(**{k: tuple(v) if k in ranges else v for k, v in d.items()})

    def override(self, values: dict[str, Any], source: str) -> SearchSpace:
        """A copy with some fields replaced (from a TOML file or the CLI)."""
        known = {f.name for f in fields(self)} - {"preset"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown search-space key(s) {', '.join(map(str, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        clean: dict[str, Any] = {}
        for key, v in values.items():
            if key in ("growth_rate", "convs_per_block", "compression"):
                if not isinstance(v, (list, tuple)):
                    raise ConfigError(f"{source}: {key} must be a list [low, high(, step)]")
                v = tuple(v) + ((1,) if key == "growth_rate" and len(v) == 2 else ())
            if key in ("input_mean", "input_std"):
                v = tuple(v)
            clean[key] = v
        return replace(self, **clean)


PRESETS: dict[str, SearchSpace] = {
    "d2l": SearchSpace(
        preset="d2l",
        growth_rate=(8, 64, 8),
        convs_per_block=(1, 8),
        compression=(0.25, 1.0, 0.125),
        num_blocks=4,
        stem="d2l",
        stem_channels=64,
        image_size=96,
        bottleneck=False,
    ),
    "cifar": SearchSpace(
        preset="cifar",
        growth_rate=(8, 32, 4),
        convs_per_block=(2, 16),
        compression=(0.25, 1.0, 0.125),
        num_blocks=3,
        stem="cifar",
        stem_channels=0,
        image_size=28,
        bottleneck=True,
        convention="paper",
    ),
}
# The cifar layout cut down for a CPU: a smoke trial in about a second, for demos.
PRESETS["tiny"] = replace(
    PRESETS["cifar"],
    preset="tiny",
    growth_rate=(8, 16, 4),
    convs_per_block=(1, 4),
    compression=(0.5, 1.0, 0.25),
)


def sample(trial: optuna.trial.BaseTrial, space: SearchSpace) -> ArchConfig:
    """Every `suggest_*` of the project: an Optuna trial -> an architecture."""
    k_lo, k_hi, k_step = space.growth_rate
    k = trial.suggest_int("growth_rate", k_lo, k_hi, step=k_step)
    c_lo, c_hi = space.convs_per_block
    convs = tuple(
        trial.suggest_int(f"convs_per_block_{i}", c_lo, c_hi)
        for i in range(1, space.num_blocks + 1)
    )
    t_lo, t_hi, t_step = space.compression
    theta = trial.suggest_float("compression", t_lo, t_hi, step=t_step)
    return space.config(k, convs, theta)


def params_of(config: ArchConfig) -> dict[str, Any]:
    """Inverse of `sample`: the Optuna params that give this config."""
    params: dict[str, Any] = {"growth_rate": config.growth_rate}
    for i, c in enumerate(config.convs_per_block, start=1):
        params[f"convs_per_block_{i}"] = c
    params["compression"] = config.compression
    return params


def reference_params(space: SearchSpace) -> dict[str, Any] | None:
    """The d2l chapter's network as params of this space, or None if the space excludes it."""
    ref = D2L_CHAPTER
    fixed_ok = (
        space.num_blocks == len(ref.convs_per_block)
        and space.stem == ref.stem
        and (space.stem_channels or 2 * ref.growth_rate) == ref.stem_channels
        and space.image_size == ref.image_size
        and space.bottleneck == ref.bottleneck
        and space.convention == ref.convention
    )
    k_lo, k_hi, k_step = space.growth_rate
    c_lo, c_hi = space.convs_per_block
    t_lo, t_hi, t_step = space.compression
    in_range = (
        k_lo <= ref.growth_rate <= k_hi
        and (ref.growth_rate - k_lo) % k_step == 0
        and all(c_lo <= c <= c_hi for c in ref.convs_per_block)
        and t_lo <= ref.compression <= t_hi
        and _on_grid(ref.compression - t_lo, t_step)
    )
    return params_of(ref) if fixed_ok and in_range else None


def parse_range(text: str, integer: bool) -> tuple[Any, ...]:
    """'8:64:8' -> (8, 64, 8); '1:8' -> (1, 8). A ConfigError for anything else."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"a range is LOW:HIGH or LOW:HIGH:STEP, got {text!r}")
    try:
        return tuple(int(p) if integer else float(p) for p in parts)
    except ValueError:
        kind = "integers" if integer else "numbers"
        raise ConfigError(f"a range takes {kind}, got {text!r}") from None


def load_space_file(path: str | Path) -> dict[str, Any]:
    """Read a search-space TOML file (flat keys, see README) into override values."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read search-space file {p}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"search-space file {p} is not valid TOML: {e}") from None
    return data
