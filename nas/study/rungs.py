"""Successive halving's rungs (nas.search --halving ETA --rungs R): what a run at each
rung trains on, and which rung a stored trial reached.

Rung 0 trains on the train budget's images / ETA^(R-1), each rung above on ETA times as
many, the top rung (R - 1) on the whole budget. Each rung's run is a whole run at its own
budget, from scratch: warm-up, then decay to zero (nas.training.budget), the same seed.
Each run is one Optuna trial, with its `rung`, the run it takes its network on from
(`promoted_from`) and the network's accuracy at every rung so far (`rung_accuracies`)
in its record. Which runs go up a rung is nas.parallel.promotion's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import optuna

from nas.errors import ConfigError
from nas.study.record import StudyRecord, TrialRecord
from nas.training.budget import TrainBudget

__all__ = ["DEFAULT_RUNGS", "Halving", "earlier_promotion", "rung_counts", "rung_of"]

DEFAULT_RUNGS = 3
# a trial queued for a promotion in one of these states trains it (a failed one does not)
LIVE = (
    optuna.trial.TrialState.WAITING,
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.COMPLETE,
)


@dataclass(frozen=True)
class Halving:
    eta: int  # each rung keeps its best 1/eta, trained eta times as long at the next
    rungs: int = DEFAULT_RUNGS  # rung 0 .. rungs - 1 (the top: the whole train budget)

    def __post_init__(self) -> None:
        for name in ("eta", "rungs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 2:
                raise ConfigError(f"halving {name} must be an integer of 2 or more, got {v!r}")

    @property
    def top(self) -> int:
        return self.rungs - 1

    def train_images(self, budget: TrainBudget, rung: int) -> int:
        return budget.train_images // self.eta ** (self.top - rung)

    def budget(self, budget: TrainBudget, rung: int) -> TrainBudget:
        """The train budget of a run at `rung` (the top rung's: `budget` itself)."""
        return replace(budget, train_images=self.train_images(budget, rung))

    def check(self, budget: TrainBudget) -> None:
        """Refuses rungs whose lowest trains on less than one batch."""
        low = self.train_images(budget, 0)
        if low < budget.batch_size:
            raise ConfigError(
                f"--halving {self.eta} with {self.rungs} rungs trains rung 0 on "
                f"{budget.train_images:,} / {self.eta**self.top} = {low:,} images, less than "
                f"one batch of {budget.batch_size} (budget {budget.name!r}): use fewer "
                "--rungs, a smaller --halving, or a larger budget"
            )

    def describe(self, budget: TrainBudget) -> str:
        sizes = ", ".join(f"{self.train_images(budget, r):,}" for r in range(self.rungs))
        return f"halving {self.eta}: {self.rungs} rungs of {sizes} train images"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Halving:
        if not isinstance(d, dict) or set(d) != {"eta", "rungs"}:
            raise ConfigError(f"a halving record is {{'eta': E, 'rungs': R}}, got {d!r}")
        return cls(**d)

    @classmethod
    def of(cls, s: StudyRecord) -> Halving | None:
        """The study's halving; None for a search without."""
        return cls.from_dict(s.halving) if s.halving else None


def rung_of(r: TrialRecord, halving: Halving) -> int:
    """A run's rung (a trial from before the study halved trained on the whole budget)."""
    return halving.top if r.rung is None else r.rung


def earlier_promotion(trial: optuna.Trial) -> int | None:
    """The number of an earlier trial queued for the same promotion as `trial` (two workers
    queued it at once) and not failed: that one trains the network, `trial` must not."""
    source = TrialRecord.of(trial).promoted_from
    if source is None:
        return None
    for t in trial.study.get_trials(deepcopy=False, states=LIVE):
        if t.number < trial.number and TrialRecord.of(t).promoted_from == source:
            return t.number
    return None


def rung_counts(study: optuna.Study, halving: Halving) -> list[tuple[int, int]]:
    """Per rung: (networks trained there, training images each)."""
    counts = [0] * halving.rungs
    budget = TrainBudget.from_dict(StudyRecord.of(study).budget)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        if r.trained:
            counts[rung_of(r, halving)] += 1
    return [(n, halving.train_images(budget, rung)) for rung, n in enumerate(counts)]
