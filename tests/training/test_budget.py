"""nas.training.budget: the LR schedule and budget validation."""

from __future__ import annotations

import pytest

from nas.errors import ConfigError
from nas.training.budget import BUDGETS, TrainBudget, get_budget


@pytest.mark.parametrize("name", list(BUDGETS))
def test_schedule_as_documented(name: str) -> None:
    """Warm-up over round(10%) of the steps to the peak, which one step runs at; linear
    decay towards 0, reached one step after the last (the last runs at peak / (d + 1))."""
    b = BUDGETS[name]
    lrs = [b.lr_at(s) for s in range(b.steps)]
    warm = round(b.warmup * b.steps)
    assert lrs.count(b.lr) == 1 and lrs[warm - 1] == b.lr  # the peak, once, ending warm-up
    assert all(x < y for x, y in zip(lrs[:warm], lrs[1:warm]))  # rising
    assert all(x > y for x, y in zip(lrs[warm - 1 :], lrs[warm:]))  # then strictly falling
    decay = b.steps - warm
    assert lrs[-1] == pytest.approx(b.lr / (decay + 1), rel=1e-12)  # no step at LR 0
    steps = [lrs[i] - lrs[i + 1] for i in range(warm - 1, b.steps - 1)]
    assert steps == pytest.approx([b.lr / (decay + 1)] * len(steps), rel=1e-9)  # linear
    assert b.lr_at(b.steps) == 0.0


def test_round_trip_and_unknown_keys() -> None:
    b = get_budget("short")
    assert TrainBudget.from_dict(b.to_dict()) == b
    with pytest.raises(ConfigError, match="unknown budget key"):
        TrainBudget.from_dict(b.to_dict() | {"epochs": 3})
    with pytest.raises(ConfigError, match="unknown budget"):
        get_budget("huge")


@pytest.mark.parametrize(
    "change",
    [
        {"train_images": 0},
        {"batch_size": -1},
        {"train_images": 10, "batch_size": 64},
        {"lr": float("nan")},
        {"lr": -0.1},
        {"momentum": 1.5},
        {"seed": -1},
        {"bn_recalibration": -5},
    ],
)
def test_invalid_budgets(change: dict) -> None:
    with pytest.raises(ConfigError):
        TrainBudget.from_dict(get_budget("smoke").to_dict() | change)
