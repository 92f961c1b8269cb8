"""The report page: one self-contained HTML file of a study (its figures, summary and
Pareto table), and the table files beside it."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from pathlib import Path

import optuna
import pandas as pd

from nas.errors import UsageError
from nas.results.figures import (
    MIN_TRUSTED_TRIALS,
    axis_limit,
    costs_figure,
    dependence_figure,
    hypervolume_figure,
    importance_figure,
    pareto_figure,
)
from nas.results.front import (
    why_no_front,
)
from nas.results.refinements import linked_refinements
from nas.results.table import (
    DUPLICATE,
    LOWER_RUNG,
    OBJECTIVE_COLUMNS,
    OVER_BUDGET_ACCURACY,
    OVER_EARLIER,
    OVER_MACS,
    OVER_OTHER,
    OVER_TRAINED,
    describe_budget,
    trials_frame,
)
from nas.study.metrics import METRICS, Limits
from nas.study.record import StudyRecord

__all__ = [
    "write_report",
]


def write_report(study: optuna.Study, out: Path, table_format: str | None = None) -> dict:
    """Write the HTML page, the Pareto CSV (and the full table); return what was written."""
    df = trials_frame(study)
    objectives = list(StudyRecord.of(study).objectives)
    cost_cols = [OBJECTIVE_COLUMNS[n] for n in objectives[1:]]
    out.parent.mkdir(parents=True, exist_ok=True)
    front = df[df["status"] == "pareto"].sort_values(cost_cols[0])
    written = _write_tables(df, front, out, table_format)
    timed = df[df["CPU latency (ms)"].notna() | df["GPU latency (ms)"].notna()]
    beside = int(timed["timed_beside"].max()) if len(timed) else 1
    plots = _plots(study, df, cost_cols, contended=beside > 1)
    shown = front.drop(columns=["status", "fail_reason", "timed_beside"]).dropna(
        axis=1, how="all"
    )  # a column no front trial has (GPU costs on a CPU) is left out
    table = shown.to_html(
        index=False, float_format=lambda v: f"{v:.4g}", na_rep="", classes="pareto"
    )
    failed = df[df["status"] == "fail"][["trial", "convs_per_block", "fail_reason"]]
    failed_html = (
        "<h2>Failed trials</h2>" + failed.to_html(index=False, na_rep="") if len(failed) else ""
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>nas: {escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ccc;padding:2px 6px}}
.wide{{overflow-x:auto}}
.caution{{background:#fff3cd;border-left:4px solid #e0a800;padding:6px 10px}}</style>
</head><body>
<h1>Study {escape(study.study_name)}</h1>
<p>Written {stamp} by nas.report.</p>
{_summary_html(study, df, objectives, beside)}
{"".join(plots[: len(cost_cols)])}
<h2>Pareto trials</h2>
<div class="wide">{table}</div>
{"".join(plots[len(cost_cols) :])}
{failed_html}
</body></html>
"""
    out.write_text(html)
    return written


def _write_tables(
    df: pd.DataFrame, front: pd.DataFrame, out: Path, table_format: str | None
) -> dict[str, Path]:
    """OUT-pareto.csv, and with table_format the whole table (CSV or parquet)."""
    pareto_csv = out.with_name(out.stem + "-pareto.csv")
    front.to_csv(pareto_csv, index=False)
    written = {"html": out, "pareto_csv": pareto_csv}
    if table_format == "csv":
        written["table"] = out.with_name(out.stem + "-trials.csv")
        df.to_csv(written["table"], index=False)
    elif table_format == "parquet":
        written["table"] = out.with_name(out.stem + "-trials.parquet")
        try:
            df.to_parquet(written["table"], index=False)
        except ImportError:
            raise UsageError("--format parquet needs pyarrow: pip install pyarrow") from None
    return written


def _plots(
    study: optuna.Study, df: pd.DataFrame, cost_cols: list[str], contended: bool
) -> list[str]:
    """Each panel as an HTML fragment (plotly.js inlined in the first), in page order."""
    a = StudyRecord.of(study)
    stdev = (a.seed_stdev or {}).get("stdev")
    refined = linked_refinements(study)
    three = len(cost_cols) == 2
    hypervolume = hypervolume_figure(df, study)
    figures = [
        *(pareto_figure(df, refined, stdev, c, axis_limit(a, c), three) for c in cost_cols),
        costs_figure(df, contended),
        *([hypervolume] if hypervolume is not None else []),
        importance_figure(study),
        dependence_figure(df),
    ]
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}")
        for i, fig in enumerate(figures)
    ]
    if hypervolume is None:  # in place of the chart: why there is none
        parts.insert(
            len(cost_cols) + 1,
            "<p>No hypervolume: drawn for studies of two objectives (accuracy and one cost); "
            "this one has three.</p>",
        )
    return parts


def _data_line(a: StudyRecord) -> str:
    """'Data: SOURCE, HxWxC, N classes; train/val/test sizes, augmentation.'"""
    fp = a.data
    return (
        f"Data: {a.data_record.get('source', '?')}, {'x'.join(map(str, fp['shape']))} images "
        f"in {fp['classes']} classes; {fp['train']:,} train, {fp['val']:,} validation, "
        f"{fp['test']:,} test images (the test split unused); augmentation "
        f"{a.budget['augment']}."
    )


def _summary_html(
    study: optuna.Study, df: pd.DataFrame, objectives: list[str], beside: int
) -> str:
    """What the study holds, how its trials were trained and scored, and the cautions a
    reader needs before comparing its numbers."""
    a = StudyRecord.of(study)
    counts = df["status"].value_counts().to_dict()
    budget = a.budget
    trained = int(df["val_accuracy"].notna().sum() + df[OVER_BUDGET_ACCURACY].notna().sum())
    cautions = []
    if budget.get("name") == "smoke":
        cautions.append(
            "This study uses the <b>smoke</b> budget (seconds per trial on a CPU): its "
            "accuracies rank nothing; search with <code>short</code> or <code>long</code> "
            "on a GPU to compare architectures."
        )
    if beside > 1:
        cautions.append(
            "Latencies here were timed while other trials ran on the same host "
            f"(up to {beside} at once: --workers x --concurrency): "
            "they include the others' load, so they are higher and noisier than the "
            "network's own, and their rank correlation with MACs is weaker. Time them with "
            "one trial at a time (--workers 1 --concurrency 1) to compare latencies."
        )
    if not counts.get("pareto"):
        why = why_no_front(study)
        cautions.append(escape(why[0].upper() + why[1:]) + ".")
    if trained < MIN_TRUSTED_TRIALS:
        cautions.append(
            f"Only {trained} trained trial{'s' if trained != 1 else ''}: the front, the "
            "importances and the trends below are rough; they firm up past "
            f"{MIN_TRUSTED_TRIALS} trials."
        )
    return (
        f"<p>{len(df)} trials: {counts.get('pareto', 0)} on the Pareto front, "
        f"{counts.get('dominated', 0)} dominated, "
        f"{counts.get(OVER_MACS, 0) + counts.get(OVER_OTHER, 0)} over a budget (not trained), "
        + (
            f"{counts[OVER_TRAINED]} trained but over a budget (infeasible), "
            if counts.get(OVER_TRAINED)
            else ""
        )
        + (
            f"{counts[OVER_EARLIER]} not trained under an earlier budget but within today's "
            "(trained when sampled again), "
            if counts.get(OVER_EARLIER)
            else ""
        )
        + (
            f"{counts[LOWER_RUNG]} at a lower rung of the halving (shorter runs: their "
            "accuracies are not ranked with the top rung's), "
            if counts.get(LOWER_RUNG)
            else ""
        )
        + (
            f"{counts['pruned']} pruned at their start (a promotion another trial made), "
            if counts.get("pruned")
            else ""
        )
        + f"{counts.get(DUPLICATE, 0)} repeating a trained network (its "
        f"values reused), {counts.get('fail', 0)} failed, {counts.get('running', 0)} "
        "running.<br>"
        f"{escape(describe_budget(budget))}<br>"
        "Budgets: "
        + escape(Limits.from_dict(a.limits).describe())
        + ".<br>"
        + escape(_data_line(a))
        + "<br>Objectives: validation accuracy on at most "
        f"{budget['val_images']:,} images of the data's fixed validation split "
        "(the test set is not used; maximised), and "
        + " and ".join(
            f"{escape(METRICS[n].label)}: {escape(METRICS[n].how)}" for n in objectives[1:]
        )
        + " (minimised). Every trial also measures the other costs (table and plots below)."
        "</p>" + "".join(f'<p class="caution">{c}</p>' for c in cautions)
    )
