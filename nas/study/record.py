"""What a trial and a study store: every key, its type and unit, who writes it, and how it
reads back.

Optuna keeps them as JSON user attributes. Every other module reads a stored trial
through `TrialRecord.of(t)` and a study through `StudyRecord.of(study)`, and writes
through `write_trial` and `trial_attrs` (a trial), `experiment` and `write_study`
(a study): no other module names a key. A study carries the format it was written in
(`record`); one from before this format is refused on resume with one line
(nas.study.storage), as is one whose experiment differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import optuna

__all__ = [
    "EXPERIMENT_KEYS",
    "RECORD_VERSION",
    "StudyRecord",
    "TrialRecord",
    "experiment",
    "stored_experiment",
    "trial_attrs",
    "write_study",
    "write_trial",
]

RECORD_VERSION = 2  # the `record` a study carries: the keys below (1: before this module)


@dataclass(frozen=True)
class TrialRecord:
    """A stored trial's user attributes, typed; a key the trial lacks reads as its default.

    Written by nas.study.objective as the trial runs, but for those a trial is queued
    with (`reference`, `seed`, `source_trial`; a promotion's `rung`, `promoted_from` and
    `rung_accuracies`, nas.parallel.promotion)."""

    # the network, before training
    config: dict[str, Any] | None = None  # nas.arch.config.ArchConfig.to_dict()
    params: int | None = None  # parameters (a count)
    macs_fvcore: int | None = None  # MACs (fvcore) at batch 1 (a count)
    fvcore_seconds: float | None = None  # s fvcore's count took
    # cost key (nas.study.metrics.Metric.key) -> {"value", "unit", "device", ...}: every
    # cost measured (nas.training.measure.Measured.to_dict); MACs and params in millions
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    timed_beside: int = 1  # trials that could run at once on the host as costs were timed
    # its fate
    trained: bool = False  # trained here (False: over a cost limit known before, or a repeat)
    over_budget: tuple[str, ...] = ()  # cost keys over their limit as the trial ran
    duplicate_of: int | None = None  # the trial whose network and seed it repeats
    fail_reason: str | None = None  # a failed trial: why, in one line
    # its training (trained trials)
    train_seconds: float | None = None  # s of training steps, warm-up included
    train_images: int | None = None  # images drawn in training (steps x batch)
    images_per_second: float | None = None  # training images per second
    final_loss: float | None = None  # the last step's training loss
    device: str | None = None  # the GPU's name, or "cpu (N threads)"
    step_mode: str = ""  # "cuda-graph", "eager", or "eager: <why graphs were off>"
    seconds: dict[str, float] = field(default_factory=dict)  # where the trial's time went
    # set when queued
    reference: str | None = None  # nas.parallel.run: "d2l chapter", the chapter's network
    seed: int | None = None  # nas.refine: the training seed of a refined run
    source_trial: int | None = None  # nas.refine: the source study's trial it trains again
    # a halving search (nas.study.rungs): the run's rung (0: the lowest; None: not
    # halving, the whole budget)
    rung: int | None = None
    promoted_from: int | None = None  # the run whose network it takes a rung up (queued)
    rung_accuracies: tuple[float, ...] = ()  # the network's accuracy at each rung to this

    @classmethod
    def of(cls, t: optuna.trial.FrozenTrial | optuna.Trial) -> TrialRecord:
        return _read(cls, t.user_attrs)

    @property
    def mmacs(self) -> float:
        """MACs (fvcore) in millions."""
        assert self.macs_fvcore is not None, "a trial is costed before anything else"
        return self.macs_fvcore / 1e6


TRIAL_KEYS = frozenset(f.name for f in fields(TrialRecord))
R = TypeVar("R")


def _read(cls: type[R], attrs: dict[str, Any]) -> R:
    """The record's fields from stored attributes (JSON): tuples stored as lists come back
    as tuples; other keys are not the record's."""
    values = {}
    for f in fields(cls):
        if f.name in attrs:
            v = attrs[f.name]
            values[f.name] = tuple(v) if str(f.type).startswith("tuple") else v
    return cls(**values)


def trial_attrs(**values: Any) -> dict[str, Any]:
    """User attributes for a trial (queued ones: `optuna.Study.enqueue_trial`), by the
    names of TrialRecord's fields."""
    unknown = set(values) - TRIAL_KEYS
    assert not unknown, f"not a key of a trial's record: {sorted(unknown)}"
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def write_trial(trial: optuna.Trial, **values: Any) -> None:
    """Store these fields of the running trial's record."""
    for key, value in trial_attrs(**values).items():
        trial.set_user_attr(key, value)


# What makes a study's accuracies comparable, in the order it is checked on resume (a
# label each, for the refusal); "budget" is written last, so its presence means the
# record is complete.
EXPERIMENT_KEYS = {
    "record": "record format",
    "space": "search space",
    "objectives": "set of objectives",
    "limits": "cost limits (--max-*)",
    "precision": "training precision",
    "data": "data (the images, their splits and normalisation)",
    "budget": "train budget",
}


@dataclass(frozen=True)
class StudyRecord:
    """A study's user attributes, typed. Written by nas.study.storage on creation (the
    experiment), nas.parallel.run (`data_record`, `halving`), nas.refine (`source_study`,
    `seed_stdev`) and storage.update_limits (the cost limits and their history)."""

    record: int | None = None  # RECORD_VERSION when written (None: before this format)
    space: dict[str, Any] = field(default_factory=dict)  # nas.arch.space.SearchSpace.to_dict
    objectives: tuple[str, ...] = ()  # nas.study.metrics names, accuracy first
    limits: dict[str, Any] = field(default_factory=dict)  # nas.study.metrics.Limits.to_dict
    precision: str = ""  # nas.training.step.precision: "bf16 autocast (CUDA)", "fp32 (CPU)"
    data: dict[str, Any] = field(default_factory=dict)  # nas.data.dataset.Dataset.fingerprint
    budget: dict[str, Any] = field(default_factory=dict)  # nas.training.budget.TrainBudget
    # [{"at": ISO time, "limits"}]: the cost limits at creation and at each change
    limits_history: list[dict[str, Any]] = field(default_factory=list)
    data_record: dict[str, Any] = field(default_factory=dict)  # Dataset.record(): its source
    source_study: str | None = None  # a refined study: the study it refines
    # a refined study: the pooled seed noise {"stdev", "seeds", "of", "dof"} (nas.refine)
    seed_stdev: dict[str, Any] | None = None
    # a halving search: nas.study.rungs.Halving.to_dict (written by nas.parallel.run)
    halving: dict[str, Any] | None = None

    @classmethod
    def of(cls, study: optuna.Study) -> StudyRecord:
        return cls.from_attrs(study.user_attrs)

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> StudyRecord:
        return _read(cls, a)

    @property
    def is_search(self) -> bool:
        """Made by nas.search (or nas.refine): it records an experiment."""
        return bool(self.budget)


STUDY_KEYS = frozenset(f.name for f in fields(StudyRecord))


def experiment(
    space: dict[str, Any],
    objectives: tuple[str, ...],
    limits: dict[str, Any],
    precision: str,
    data: dict[str, Any],
    budget: dict[str, Any],
) -> dict[str, Any]:
    """A study's experiment, as stored: one entry per EXPERIMENT_KEYS key, in its order.
    (The augmentation is the train budget's: `data` is the images' fingerprint alone.)"""
    values = {
        "record": RECORD_VERSION,
        "space": space,
        "objectives": list(objectives),
        "limits": limits,
        "precision": precision,
        "data": data,
        "budget": budget,
    }
    assert list(values) == list(EXPERIMENT_KEYS)
    return values


def stored_experiment(study: optuna.Study) -> dict[str, Any]:
    """The experiment entries a study holds, as stored (a key it lacks is absent: made by
    an older nas, or still being written by the worker that created it)."""
    a = study.user_attrs
    return {key: a[key] for key in EXPERIMENT_KEYS if key in a}


def write_study(study: optuna.Study, **values: Any) -> None:
    """Store these fields of a study's record."""
    unknown = set(values) - STUDY_KEYS
    assert not unknown, f"not a key of a study's record: {sorted(unknown)}"
    for key, value in values.items():
        study.set_user_attr(key, list(value) if isinstance(value, tuple) else value)
