"""nas.budget: the LR schedule and budget validation."""

from __future__ import annotations

import pytest

from nas.budget import BUDGETS, TrainBudget, get_budget
from nas.config import ConfigError


@pytest.mark.parametrize("name", list(BUDGETS))
def test_schedule_warms_up_then_reaches_zero(name: str) -> None:
    b = BUDGETS[name]
    lrs = [b.lr_at(s) for s in range(b.steps)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(b.lr)
    assert all(x < y for x, y in zip(lrs[:peak], lrs[1 : peak + 1]))  # rising
    assert all(x >= y for x, y in zip(lrs[peak:], lrs[peak + 1 :]))  # then falling
    assert 0 < lrs[-1] < 0.1 * b.lr  # the last step runs at a small fraction of the peak
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
