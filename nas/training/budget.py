"""How long and how a trial trains: the train budget, separate from the architecture.

A budget is counted in images, not epochs, so that trials with any batch size or
dataset subset train on the same amount of data (whole batches: steps = images // batch).
The learning rate warms up linearly to its peak, which exactly one step runs at, then
decays linearly towards zero, which it reaches one step after the last: the last step
runs at peak / (decay steps + 1), and no step is wasted at LR 0. A short run that ends
near LR 0 settles its weights, and with fixed seeds the validation accuracy ranks
architectures instead of measuring where the last noisy step landed. Every trial of a
study uses the same budget (the study stores it and refuses another).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from nas.errors import ConfigError

__all__ = ["AUGMENTS", "BUDGETS", "MIN_STEPS", "SCHEDULES", "TrainBudget", "get_budget"]

# Fewer optimiser steps than this learn too little for accuracies to mean much: nas.train
# says what to change, nas.search that its budget ranks nothing.
MIN_STEPS = 100

SCHEDULES = ("linear", "constant")
AUGMENTS = ("none", "crop-flip")  # none, or nas.data.dataset.crop_flip


@dataclass(frozen=True)
class TrainBudget:
    name: str  # preset name, or "custom"
    train_images: int  # images drawn in training (steps = train_images // batch_size)
    val_images: int  # validation images scored (a fixed prefix of the 10k val split)
    batch_size: int = 256  # d2l uses 256
    lr: float = 0.1  # peak SGD learning rate (d2l: 0.1 at batch 256)
    momentum: float = 0.9  # Nesterov momentum
    weight_decay: float = 5e-4  # L2 on all weights
    warmup: float = 0.1  # fraction of steps spent ramping the LR up from 0
    schedule: str = "linear"  # "linear": warm-up, then to 0 at the end; "constant": d2l's
    label_smoothing: float = 0.0
    bn_recalibration: int = 0  # if > 0: BN statistics re-estimated on this many train images
    seed: int = 0  # init and data-order seed, the same for every trial of a study
    augment: str = "none"  # "crop-flip": random 4 px crop and mirror per image (nas.data.dataset)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"budget schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.augment not in AUGMENTS:
            raise ConfigError(
                f"budget augment must be one of {', '.join(AUGMENTS)}, got {self.augment!r}"
            )
        b = self.bn_recalibration
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ConfigError(f"budget bn_recalibration must be >= 0, got {b!r}")
        for name in ("train_images", "val_images", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"budget {name} must be a positive integer, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"budget seed must be a non-negative integer, got {self.seed!r}")
        if self.train_images < self.batch_size:
            raise ConfigError(
                f"budget train_images ({self.train_images}) must be at least one batch "
                f"({self.batch_size})"
            )
        for name, lo, hi in (
            ("lr", 0.0, 1e4),  # large enough to diverge on purpose, finite
            ("momentum", 0.0, 1.0),
            ("weight_decay", 0.0, 1.0),
            ("warmup", 0.0, 1.0),
            ("label_smoothing", 0.0, 1.0),
        ):
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            if not ok or not math.isfinite(v) or not lo <= v <= hi:
                raise ConfigError(f"budget {name} must be in [{lo}, {hi}], got {v!r}")

    @property
    def steps(self) -> int:
        return self.train_images // self.batch_size

    def lr_at(self, step: int) -> float:
        """LR of step 0, 1, ...: linear warm-up over `warm` steps ending at the peak (step
        warm - 1), then linear decay that would reach 0 at step `steps`, one past the last.
        (Or the constant `lr`.)"""
        if self.schedule == "constant":
            return self.lr
        total = self.steps
        warm = max(1, round(self.warmup * total))
        if step < warm:
            return self.lr * ((step + 1) / warm)  # the ratio first: exactly lr at the peak
        return self.lr * max(0.0, (total - step) / (total - warm + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> TrainBudget:
        if not isinstance(d, dict):
            raise ConfigError("a budget must be a JSON object")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown budget key(s): {', '.join(map(str, unknown))}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"budget: {e}") from None

    def with_seed(self, seed: int) -> TrainBudget:
        return replace(self, seed=seed)


BUDGETS: dict[str, TrainBudget] = {
    # A trial in seconds on two CPU cores, for tests and demos; its accuracies rank nothing.
    # 16 steps leave BN's running statistics far from the weights' (accuracy near chance),
    # so they are re-estimated with the final weights before scoring.
    "smoke": TrainBudget(
        "smoke", train_images=512, val_images=500, batch_size=32, lr=0.1, bn_recalibration=256
    ),
    # The smoke budget four times over: a higher budget for nas.refine of a smoke study on
    # a CPU (demos and tests); it ranks nothing either.
    "smoke-long": TrainBudget(
        "smoke-long",
        train_images=2048,
        val_images=500,
        batch_size=32,
        lr=0.1,
        bn_recalibration=256,
    ),
    # About one epoch of the 50k train split: the default, meant for a GPU.
    "short": TrainBudget("short", train_images=50_000, val_images=10_000),
    # Five epochs: slower, closer to the final accuracy.
    "long": TrainBudget("long", train_images=250_000, val_images=10_000),
}


def get_budget(name: str) -> TrainBudget:
    try:
        return BUDGETS[name]
    except KeyError:
        raise ConfigError(f"unknown budget {name!r}; choose one of {', '.join(BUDGETS)}") from None
