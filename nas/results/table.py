"""A study as one table: a row per trial, its parameters, objectives, costs and state in
words (what the report page plots and writes as CSV or Parquet)."""

from __future__ import annotations

import math

import optuna
import pandas as pd

from nas.results.front import (
    kendall_tau,
    over_budgets,
    pareto_front,
    spearman_rho,
    usable_trials,
)
from nas.study.metrics import METRICS

__all__ = [
    "COST_COLUMNS",
    "MACS",
    "OBJECTIVE_COLUMNS",
    "OVER_EARLIER",
    "OVER_OTHER",
    "STATES",
    "describe_budget",
    "rank_agreement",
    "trials_frame",
]

MACS = "MMACs (fvcore)"


# measured costs (a trial's `costs` attribute, nas.training.measure) -> table columns, with units
COST_COLUMNS = {
    **{m.key: m.label for m in METRICS.values() if m.key not in ("", "macs", "params")},
    "throughput_gpu": "GPU throughput (img/s)",  # measured beside GPU latency
}


# table column of each objective: its metric name, but parameters are counted, not in M
OBJECTIVE_COLUMNS = {**{n: m.label for n, m in METRICS.items()}, "params": "params"}


OVER_OTHER = "not trained (over a budget)"


OVER_EARLIER = "not trained (over an earlier budget)"


STATES = optuna.trial.TrialState


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with the columns the report and its CSV need."""
    usable = {t.number for t in usable_trials(study)}
    attrs = study.user_attrs  # one read of the study, not one per trial
    front = {t.number for t in pareto_front(study)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        cfg = a.get("config") or {}
        convs = cfg.get("convs_per_block") or []
        if t.state == STATES.COMPLETE and t.number in usable:
            status = "pareto" if t.number in front else "dominated"
        elif t.state == STATES.COMPLETE and a.get("duplicate_of") is not None:
            status = "duplicate (not trained again)"
        elif t.state == STATES.COMPLETE and not over_budgets(study, t, attrs):
            status = OVER_EARLIER  # within the budgets now: trained when sampled again
        elif t.state == STATES.COMPLETE:
            over = a.get("over_budget") or ["macs"]  # older trials: only a MAC budget
            status = "not trained (over MAC budget)" if over == ["macs"] else OVER_OTHER
        else:
            status = t.state.name.lower()
        costs = a.get("costs") or {}
        rows.append(
            {
                "trial": t.number,
                "status": status,
                "val_accuracy": t.values[0] if t.values and t.number in usable else None,
                MACS: a["macs_fvcore"] / 1e6 if "macs_fvcore" in a else None,
                "growth_rate": cfg.get("growth_rate"),
                "convs_per_block": "-".join(map(str, convs)) or None,
                "total_convs": sum(convs) if convs else None,
                "compression": cfg.get("compression"),
                "params": a.get("params"),
                **{col: costs.get(key, {}).get("value") for key, col in COST_COLUMNS.items()},
                "train_seconds": a.get("train_seconds"),
                "images_per_second": a.get("images_per_second"),
                "reference": bool(a.get("reference")),
                "duplicate_of": a.get("duplicate_of"),
                "fail_reason": a.get("fail_reason"),
                "device": a.get("device"),
                "timed_beside": a.get("timed_beside", 1),
            }
        )
    return pd.DataFrame(rows)


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
    rows = df[
        df[col].notna() & df[MACS].notna() & (df["status"] != "duplicate (not trained again)")
    ]
    if len(rows) < 3:
        return len(rows), math.nan, math.nan
    xs, ys = list(rows[MACS]), list(rows[col])
    return len(rows), spearman_rho(xs, ys), kendall_tau(xs, ys)
