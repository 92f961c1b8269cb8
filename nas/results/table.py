"""A study as one table: a row per trial, its parameters, objectives, costs and state in
words (what the report page plots and writes as CSV or Parquet)."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pandas as pd

from nas.results.front import (
    kendall_tau,
    over_limits,
    pareto_front,
    spearman_rho,
    usable_trials,
)
from nas.study.metrics import COSTS, METRICS
from nas.study.record import StudyRecord, TrialRecord
from nas.study.rungs import Halving, rung_of

__all__ = [
    "COST_COLUMNS",
    "OVER_BUDGET_ACCURACY",
    "DUPLICATE",
    "LOWER_RUNG",
    "LOWER_RUNG_ACCURACY",
    "MACS",
    "OBJECTIVE_COLUMNS",
    "OVER_MACS",
    "OVER_EARLIER",
    "OVER_OTHER",
    "OVER_TRAINED",
    "STATES",
    "describe_budget",
    "rank_agreement",
    "trials_frame",
]

MACS = "MMACs (fvcore)"


# measured costs (a trial's `costs`, nas.training.measure) -> table columns, with units;
# MACs and parameters have columns of their own (parameters counted, not in millions)
COST_COLUMNS = {key: m.col for key, m in COSTS.items() if key not in ("macs", "params")}
LATENCY_SPREAD = "CPU latency spread (IQR / median)"
LATENCY_SHIPPED = "CPU latency as shipped (ms)"
OVER_BUDGET_ACCURACY = "val_accuracy (trained, over a budget)"
OBJECTIVE_COLUMNS = {n: m.col for n, m in METRICS.items()}  # the column of each objective


# a complete trial's status, beside "pareto" and "dominated" (the usable ones)
DUPLICATE = "duplicate (not trained again)"
OVER_MACS = "not trained (over MAC budget)"
OVER_OTHER = "not trained (over a budget)"
OVER_EARLIER = "not trained (over an earlier budget)"
LOWER_RUNG = "lower rung (a shorter run)"  # a halving search's run below the top rung
LOWER_RUNG_ACCURACY = "val_accuracy (lower rung)"
OVER_TRAINED = "trained, over a budget"  # its memory, known only after training, or a
# budget tightened since: infeasible, and kept off the front


STATES = optuna.trial.TrialState


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with the columns the report and its CSV need."""
    usable = {t.number for t in usable_trials(study)}
    attrs = StudyRecord.of(study)  # one read of the study, not one per trial
    front = {t.number for t in pareto_front(study)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = TrialRecord.of(t)
        rows.append({"trial": t.number, "status": _status(study, t, a, attrs, usable, front)})
        rows[-1].update(_columns(t, a, t.number in usable))
        if rows[-1]["status"] == LOWER_RUNG:  # its accuracy is of a shorter run: apart
            rows[-1][OVER_BUDGET_ACCURACY] = None
        rows[-1][LOWER_RUNG_ACCURACY] = t.values[0] if rows[-1]["status"] == LOWER_RUNG else None
    return pd.DataFrame(rows)


def _lower_rung(a: TrialRecord, attrs: StudyRecord) -> bool:
    halving = Halving.of(attrs)
    return halving is not None and rung_of(a, halving) < halving.top


def _status(
    study: optuna.Study,
    t: optuna.trial.FrozenTrial,
    a: TrialRecord,
    attrs: StudyRecord,
    usable: set[int],
    front: set[int],
) -> str:
    """A trial's status in words: pareto, dominated, a reason it is neither, or its state."""
    if t.state != STATES.COMPLETE:
        return t.state.name.lower()
    if t.number in usable:
        return "pareto" if t.number in front else "dominated"
    if a.duplicate_of is not None:
        return DUPLICATE
    over = over_limits(study, t, attrs)  # by the limits of today
    if a.trained and not over and _lower_rung(a, attrs):
        return LOWER_RUNG
    if not over:
        return OVER_EARLIER  # within the budgets now: trained when sampled again
    if a.trained:
        return OVER_TRAINED
    return OVER_MACS if over == ["mmacs_over_budget"] else OVER_OTHER


def _columns(t: optuna.trial.FrozenTrial, a: TrialRecord, usable: bool) -> dict[str, Any]:
    cfg = a.config or {}
    convs = cfg.get("convs_per_block") or []
    return {
        "val_accuracy": t.values[0] if t.values and usable else None,
        # a network trained and then found over a budget (today's): its accuracy, apart
        OVER_BUDGET_ACCURACY: t.values[0]
        if t.values and a.trained and not usable and a.duplicate_of is None
        else None,
        "rung": a.rung,  # a halving search's (nas.study.rungs); None: the whole budget
        MACS: a.mmacs if a.macs_fvcore is not None else None,
        "growth_rate": cfg.get("growth_rate"),
        "convs_per_block": "-".join(map(str, convs)) or None,
        "total_convs": sum(convs) if convs else None,
        "compression": cfg.get("compression"),
        "params": a.params,
        **{col: a.costs.get(key, {}).get("value") for key, col in COST_COLUMNS.items()},
        # how far apart its timed runs were (nas.training.measure.steady)
        LATENCY_SPREAD: a.costs.get("latency_cpu", {}).get("spread"),
        # where timed (a network the eager figure put over a CPU budget): what judged it
        LATENCY_SHIPPED: a.costs.get("latency_cpu_shipped", {}).get("value"),
        "train_seconds": a.train_seconds,
        "images_per_second": a.images_per_second,
        "reference": bool(a.reference),
        "duplicate_of": a.duplicate_of,
        "fail_reason": a.fail_reason,
        "device": a.device,
        "timed_beside": a.timed_beside,
    }


def describe_budget(b: dict) -> str:
    """A study's train budget in words (the page showed raw JSON)."""
    if not b:
        return "Train budget: not recorded."
    steps = b["train_images"] // b["batch_size"]
    schedule = (
        f"warm-up over {b['warmup']:.0%} of the steps, then linear decay"
        if b["schedule"] == "linear"
        else "constant"
    )
    bn = (
        f", BN statistics re-estimated on {b['bn_recalibration']:,} images"
        if b.get("bn_recalibration")
        else ""
    )
    return (
        f"Train budget {b['name']}: {steps:,} steps of {b['batch_size']} images "
        f"({steps * b['batch_size']:,}), SGD peak LR {b['lr']:g} ({schedule}), momentum "
        f"{b['momentum']:g} (Nesterov), weight decay {b['weight_decay']:g}{bn}, seed {b['seed']}."
    )


def rank_agreement(df: pd.DataFrame, col: str) -> tuple[int, float, float]:
    """(networks, Spearman rho, Kendall tau) between MACs and the cost in `col`, over the
    distinct networks measured (a repeated network counts once)."""
    rows = df[df[col].notna() & df[MACS].notna() & (df["status"] != DUPLICATE)]
    if len(rows) < 3:
        return len(rows), math.nan, math.nan
    xs, ys = list(rows[MACS]), list(rows[col])
    return len(rows), spearman_rho(xs, ys), kendall_tau(xs, ys)
