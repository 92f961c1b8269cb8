"""Picking one architecture from a study: the most accurate (within the measured seed
noise, the cheapest), the knee of the front, or the most accurate within a cost limit;
each pick with its working (the rule, its figures, the runner-up). The rules in words:
nas.export's help."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from nas.errors import UsageError
from nas.results.front import (
    knee_index,
    pareto_front,
    pooled_stdev,
    usable_trials,
    within_noise,
)
from nas.results.refinements import linked_refinements, refined_name
from nas.study.metrics import COSTS, METRICS, SHIPPED_KEYS, judged_value
from nas.study.record import StudyRecord, TrialRecord
from nas.training.budget import get_budget

__all__ = [
    "PICK_LIMITS",
    "PICK_HELP",
    "Pick",
    "describe_pick",
    "latency_key",
    "parse_limit_pick",
    "pick_trial",
]

# --pick max-NAME=N, as nas.search's --max-NAME: NAME -> the cost keys it may bound (one,
# but for the latency: the study's, see latency_key), N in the cost limit's unit
PICK_LIMITS: dict[str, list[str]] = {}
for _key, _m in COSTS.items():
    if _m.limit is not None:
        PICK_LIMITS.setdefault(_m.limit.option.removeprefix("--max-"), []).append(_key)


@dataclass(frozen=True)
class Pick:
    trial: optuna.trial.FrozenTrial
    working: dict[str, Any]  # how it was chosen: the rule, its figures, the runner-up


def pick_trial(study: optuna.Study, pick: str) -> Pick:
    """The trial `pick` names (module docstring), with its working."""
    trials = usable_trials(study)
    if not trials:
        raise UsageError(f"study {study.study_name!r} has no complete, trained, feasible trial")
    if pick == "accuracy":
        return _most_accurate(study, trials)
    if pick == "knee":
        return _knee(study)
    return _within(study, trials, *parse_limit_pick(pick))


PICK_HELP = "accuracy, knee, " + ", ".join(f"max-{n}=N" for n in PICK_LIMITS)


def parse_limit_pick(pick: str) -> tuple[str, float]:
    """'max-latency-ms=3' -> ('latency-ms', 3.0); UsageError for anything else."""
    name, _, value = pick.removeprefix("max-").partition("=")
    if not (pick.startswith("max-") and name in PICK_LIMITS and "=" in pick):
        raise UsageError(f"unknown --pick {pick!r}; use {PICK_HELP}")
    try:
        limit = float(value)
    except ValueError:
        raise UsageError(f"--pick max-{name}=N needs a number, got {pick!r}") from None
    if not (limit > 0 and math.isfinite(limit)):
        raise UsageError(f"--pick max-{name}=N needs a positive number, got {pick!r}")
    return name, limit


def _summary(t: optuna.trial.FrozenTrial, study: optuna.Study) -> dict[str, Any]:
    names = StudyRecord.of(study).objectives
    return {"trial": t.number, "values": dict(zip(names, t.values))}


def _most_accurate(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> Pick:
    """The most accurate, by its refined runs where the study has them (nas.refine) and
    within the measured seed noise: the cheapest in the first cost whose mean the noise
    cannot tell from the best mean."""
    runs, origin = _runs(study, trials)
    by = {t.number: t for t in trials if t.number in runs}
    mean = {n: statistics.fmean(r) for n, r in runs.items()}
    noise = pooled_stdev(list(runs.values()))
    sigma = noise[0] if noise else (StudyRecord.of(study).seed_stdev or {}).get("stdev")
    best = max(by, key=lambda n: (mean[n], -by[n].values[1]))
    if sigma:
        near = [
            n
            for n in by
            if within_noise(mean[n], mean[best], sigma, len(runs[n]), len(runs[best]))
        ]
        order = sorted(near, key=lambda n: (by[n].values[1], -mean[n]))
        rule = (
            "the cheapest in the first cost among those whose mean accuracy is within the "
            "seed noise of the best mean (2 sigma sqrt(1/n_a + 1/n_b))"
        )
    else:
        order = [best]
        rule = "the best mean accuracy (seed noise not measured: nas.refine --seeds 2 or more)"
    chosen = order[0]
    others = order[1:] or sorted((n for n in by if n != chosen), key=lambda n: -mean[n])

    def entry(n: int) -> dict[str, Any]:
        return {**_summary(by[n], study), "mean": mean[n], "n": len(runs[n])}

    working = {"rule": rule, "runs": origin, "sigma": sigma, **entry(chosen)}
    working["runner_up"] = entry(others[0]) if others else None
    return Pick(by[chosen], working)


def _runs(
    study: optuna.Study, trials: list[optuna.trial.FrozenTrial]
) -> tuple[dict[int, list[float]], str]:
    """Accuracy runs per usable trial: those of the study's highest-budget refinement
    (nas.refine, a linked study in the same storage) if it has one, else one run each."""
    linked = linked_refinements(study)
    if linked:
        budget = max(linked, key=lambda b: _train_images(b))
        runs = {t.number: linked[budget][t.number] for t in trials if t.number in linked[budget]}
        if runs:
            name = refined_name(study.study_name, budget)
            return runs, f"refined runs at budget {budget!r} (study {name!r})"
    return {t.number: [t.values[0]] for t in trials}, "one run each (this study's own)"


def _train_images(budget: str) -> int:
    try:
        return get_budget(budget).train_images
    except (KeyError, ValueError):
        return 0


def _knee(study: optuna.Study) -> Pick:
    names = StudyRecord.of(study).objectives
    if len(names) != 2:
        raise UsageError(
            f"--pick knee needs a study of two objectives; {study.study_name!r} has "
            f"{', '.join(names)}: pick with accuracy or a budget (max-...=N)"
        )
    front = pareto_front(study)
    i = knee_index([(t.values[0], t.values[1]) for t in front])
    rule = (
        f"the front point farthest above the chord joining the front's ends, in accuracy "
        f"vs log10 {METRICS[names[1]].label} (the most accurate if none is above it)"
    )
    others = [t for j, t in enumerate(front) if j != i]
    runner = max(others, key=lambda t: t.values[0]) if others else None
    working = {"rule": rule, **_summary(front[i], study), "front": [t.number for t in front]}
    working["runner_up"] = _summary(runner, study) if runner else None
    return Pick(front[i], working)


def _within(
    study: optuna.Study, trials: list[optuna.trial.FrozenTrial], name: str, limit: float
) -> Pick:
    keys = PICK_LIMITS[name]
    key = keys[0] if len(keys) == 1 else latency_key(study)
    cap = COSTS[key].limit
    assert cap is not None
    scale, unit = cap.scale, cap.unit
    costs = {t.number: TrialRecord.of(t).costs for t in trials}
    cost = {n: judged_value(c, key) * scale for n, c in costs.items() if key in c}
    if not cost:
        raise UsageError(f"no trained trial of {study.study_name!r} has a measured {key}")
    within = sorted(
        (t for t in trials if t.number in cost and cost[t.number] <= limit),
        key=lambda t: (-t.values[0], cost[t.number]),
    )
    if not within:
        smallest = min(cost.values())
        exact = f"{smallest:.6f}" if key == "macs" else f"{smallest:.6g}"  # MACs: whole
        raise UsageError(
            f"no trained trial has at most {limit:g} {unit}; the smallest has {exact} {unit}"
        )
    shipped = " (as shipped, where timed)" if SHIPPED_KEYS.get(key) else ""
    rule = (
        f"the most accurate with {key}{shipped} <= {limit:g} {unit} (one run each, this "
        "study's own)"
    )
    working = {"rule": rule, **_summary(within[0], study), key: cost[within[0].number]}
    working["runner_up"] = _summary(within[1], study) if within[1:] else None
    return Pick(within[0], working)


def latency_key(study: optuna.Study) -> str:
    """The latency a study is about: its objective's, else its limit's device, else CPU."""
    s = StudyRecord.of(study)
    for n in s.objectives:
        if n.startswith("latency-"):
            return METRICS[n].key
    device = s.limits.get("latency_device", "cpu")
    return f"latency_{device}"


def describe_pick(study: optuna.Study, chosen: Pick) -> str:
    """The pick in the study's objectives, and its working, in two lines."""
    w = chosen.working

    def values(entry: dict[str, Any]) -> str:
        parts = [
            f"{METRICS[n].label} {v:.4f}" if n == "accuracy" else f"{METRICS[n].label} {v:.4g}"
            for n, v in entry["values"].items()
        ]
        if "mean" in entry:
            parts[0] = f"val_accuracy {entry['mean']:.4f} (mean of {entry['n']})"
        return ", ".join(parts)

    head = f"trial {w['trial']}: {values(w)}"
    rule = f"rule: {w['rule']}"
    if "runs" in w:
        sigma = f"{w['sigma']:.4f}" if w.get("sigma") else "not measured"
        rule += f"; accuracy from {w['runs']}, seed sigma {sigma}"
    runner = w.get("runner_up")
    if runner is None:
        rule += "; no other candidate"
    else:
        rule += f"; next by the same rule: trial {runner['trial']}, {values(runner)}"
    return f"{head}\n  {rule}"
