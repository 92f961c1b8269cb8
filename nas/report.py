"""`python -m nas.report`: one self-contained HTML page of a study's results.

From pandas data frames built from the study: the accuracy-vs-MACs Pareto front (front,
dominated, not-trained-over-budget trials and the d2l reference told apart), the
hypervolume after each trial, parameter importances per objective, how accuracy and
MACs follow k, convs and theta, and the table of Pareto trials (also as CSV beside the
page). Plotly's JavaScript is inlined: the page opens offline. The page and each Pareto
trial's architecture JSON are also stored as Optuna artifacts, one click away in
optuna-dashboard (`python -m nas.dashboard`).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import warnings
from datetime import UTC, datetime
from html import escape
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nas.artifacts import attach_trial_file, default_artifact_dir, replace_study_file
from nas.cli import UsageError, make_parser, run_cli
from nas.front import (
    REF_ACCURACY,
    hypervolume_history,
    hypervolume_reference,
    kendall_tau,
    pareto_front,
    spearman_rho,
    usable_trials,
)
from nas.metrics import DEFAULT_OBJECTIVES, METRICS, describe_limits
from nas.refine import linked_refinements
from nas.storage import default_storage_url, load_study, open_storage

__all__ = ["main", "trials_frame", "write_report"]

MACS = "MMACs (fvcore)"
# measured costs (a trial's `costs` attribute, nas.measure) -> table columns, with units
COST_COLUMNS = {
    **{m.key: m.label for m in METRICS.values() if m.key not in ("", "macs", "params")},
    "throughput_gpu": "GPU throughput (img/s)",  # measured beside GPU latency
}
# table column of each objective: its metric name, but parameters are counted, not in M
OBJECTIVE_COLUMNS = {**{n: m.label for n, m in METRICS.items()}, "params": "params"}
OVER_OTHER = "not trained (over a budget)"
AXIS_TITLES = {
    MACS: "MACs (fvcore), millions, batch 1",
    "params": "parameters",
    "CPU latency (ms)": "CPU latency, ms per image, batch 1, one thread",
    "GPU latency (ms)": "GPU latency, ms per image, batch 1",
    "train memory (MB)": "GPU memory of a training step, MB",
}
MIN_TRUSTED_TRIALS = 20  # fewer trained trials: the page says its plots are rough
STATES = optuna.trial.TrialState


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial with the columns the report and its CSV need."""
    usable = {t.number for t in usable_trials(study)}
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


def _empty(fig: go.Figure, text: str) -> go.Figure:
    """Say on the plot itself why it is empty."""
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _hover(df: pd.DataFrame) -> list[str]:
    """Each trial's objectives and architecture, for the plots' hover labels."""
    out = []
    for r in df.to_dict("records"):
        lines = [f"trial {r['trial']}"]
        if pd.notna(r["val_accuracy"]):
            lines.append(f"val accuracy {r['val_accuracy']:.4f}")
        if pd.notna(r[MACS]):
            lines.append(f"{r[MACS]:,.1f} {MACS}")
        if pd.notna(r["params"]):
            lines.append(
                f"k={r['growth_rate']:g} convs={r['convs_per_block']} "
                f"theta={r['compression']:g}<br>{int(r['params']):,} params"
            )
        if pd.notna(r["train_seconds"]):
            lines.append(f"train {r['train_seconds']:.1f} s")
        out.append("<br>".join(lines))
    return out


def _points(
    rows: pd.DataFrame, y: object, name: str, marker: dict, x: str = MACS, **kw: object
) -> go.Scatter:
    """One trace of the Pareto plot: a cost (MACs) on x, with the trials' configs on hover."""
    hover = kw.pop("hovertext", None) or _hover(rows)
    return go.Scatter(
        x=rows[x],
        y=y,
        name=name,
        marker=marker,
        hovertext=hover,
        hoverinfo="text",
        mode=kw.pop("mode", "markers"),
        **kw,
    )


def log_ticks(values: pd.Series) -> list[float]:
    """Round ticks for a log axis, written out in full: 10, 20, 50 (Plotly's own read 10, 2, 5).

    1-2-3-5-7 per decade when the values span two decades or less, else 1-2-5.
    """
    if values.empty:
        return []
    lo, hi = math.floor(math.log10(values.min())), math.ceil(math.log10(values.max()))
    steps = (1, 2, 3, 5, 7) if hi - lo <= 2 else (1, 2, 5)
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in steps]
    return [v for v in ticks if values.min() / 2 <= v <= values.max() * 2]


def pareto_figure(
    df: pd.DataFrame,
    refined: dict[str, dict[int, list[float]]] | None = None,
    seed_stdev: float | None = None,
    x: str = MACS,
) -> go.Figure:
    """Accuracy against the cost in column `x` (MACs, or another objective of the study);
    the front is the study's, in all its objectives. seed_stdev: the study's measured
    per-run noise (nas.refine --seeds), drawn as +-1 stdev error bars on every trained
    point."""
    fig = go.Figure()
    trained = df[df["val_accuracy"].notna() & df[x].notna()]
    front = trained[trained["status"] == "pareto"].sort_values(x)
    dominated = trained[trained["status"] == "dominated"]
    bars = {"type": "constant", "value": seed_stdev or 0.0, "visible": seed_stdev is not None}
    fig.add_trace(
        _points(
            dominated,
            dominated["val_accuracy"],
            "dominated",
            {"color": "#9aa5b1", "size": 8},
            x=x,
            error_y=bars,
        )
    )
    fig.add_trace(
        _points(
            front,
            front["val_accuracy"],
            "Pareto front" + (f" (bars: seed stdev {seed_stdev:.4f})" if seed_stdev else ""),
            {"color": "#d62728", "size": 11},
            x=x,
            mode="lines+markers",
            line={"shape": "hv", "color": "#d62728"},
            error_y=bars,
        )
    )
    over = df[df["status"].isin(["not trained (over MAC budget)", OVER_OTHER]) & df[x].notna()]
    if not over.empty:
        floor = (trained["val_accuracy"].min() if not trained.empty else 0.5) - 0.01
        only_macs = (over["status"] == "not trained (over MAC budget)").all()
        fig.add_trace(
            _points(
                over,
                [floor] * len(over),
                "over the MAC budget (not trained)"
                if only_macs
                else "over a budget (not trained)",
                {"symbol": "x", "color": "#444", "size": 8},
                x=x,
                hovertext=[f"{h}<br>not trained" for h in _hover(over)],
            )
        )
    for budget, runs in (refined or {}).items():  # nas.refine: cheap -> refined, visibly
        rows = trained[trained["trial"].isin(list(runs))]
        means = [statistics.fmean(runs[n]) for n in rows["trial"]]
        sds = [statistics.stdev(runs[n]) if len(runs[n]) > 1 else 0.0 for n in rows["trial"]]
        seeds = max(len(v) for v in runs.values())
        xs, ys = [], []
        for (_, r), m in zip(rows.iterrows(), means):
            xs += [r[x], r[x], None]
            ys += [r["val_accuracy"], m, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": "#2ca02c", "width": 1, "dash": "dot"},
                hoverinfo="skip",
                showlegend=False,
            )
        )
        fig.add_trace(
            _points(
                rows,
                means,
                f"refined at {budget} (mean of {seeds} seed{'s' if seeds > 1 else ''})",
                {"color": "#2ca02c", "size": 10, "symbol": "diamond"},
                x=x,
                error_y={"type": "data", "array": sds, "visible": seeds > 1},
                hovertext=[
                    f"{h}<br>refined at {budget}: {m:.4f} (+-{sd:.4f}, {len(runs[n])} seeds)"
                    for h, m, sd, n in zip(_hover(rows), means, sds, rows["trial"])
                ],
            )
        )
    ref = trained[trained["reference"]]
    if not ref.empty:
        fig.add_trace(
            _points(
                ref,
                ref["val_accuracy"],
                "d2l chapter's network (reference)",
                {
                    "symbol": "star",
                    "color": "#ffbf00",
                    "size": 18,
                    "line": {"color": "black", "width": 1},
                },
                x=x,
            )
        )
    ticks = log_ticks(df[x].dropna())
    fig.update_layout(
        title=f"Validation accuracy vs {AXIS_TITLES.get(x, x).split(',')[0]}",
        xaxis={
            "type": "log",
            "title": f"{AXIS_TITLES.get(x, x)} (log scale)",
            "tickvals": ticks,
            "ticktext": [f"{v:g}" for v in ticks],
        },
        yaxis={"title": "validation accuracy"},
        height=520,
        showlegend=True,  # Plotly hides a lone trace's legend: the x marks need theirs
    )
    if trained.empty:
        _empty(fig, "no trained trial yet: nothing to rank")
    return fig


def _dots(x: pd.Series, y: pd.Series, hover: list[str]) -> go.Scatter:
    """Plain blue markers with a hover label each (the panels of many small plots)."""
    return go.Scatter(
        x=x,
        y=y,
        mode="markers",
        showlegend=False,
        marker={"color": "#1f77b4", "size": 7},
        hovertext=hover,
        hoverinfo="text",
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


def costs_figure(df: pd.DataFrame) -> go.Figure:
    """Where MACs mislead: each measured cost against MACs, log-log, with the rank
    correlation between them (1: MACs order networks exactly as the cost does)."""
    cols = [
        c
        for c in ("CPU latency (ms)", "GPU latency (ms)", "train memory (MB)")
        if df[c].notna().any()
    ]
    if not cols:
        fig = go.Figure()
        fig.update_layout(title="Measured costs vs MACs", height=300)
        return _empty(fig, "no trial has a measured latency or memory (a study of an older nas)")
    titles = []
    for c in cols:
        n, rho, tau = rank_agreement(df, c)
        titles.append(
            f"{c}: Spearman rho {rho:.2f}, Kendall tau {tau:.2f} ({n} networks)"
            if n >= 3
            else f"{c}: {n} networks, too few for a rank correlation"
        )
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=titles)
    for i, c in enumerate(cols, start=1):
        rows = df[df[c].notna() & (df["status"] != "duplicate (not trained again)")]
        fig.add_trace(
            _dots(
                rows[MACS], rows[c], [f"{h}<br>{c} {v:.3g}" for h, v in zip(_hover(rows), rows[c])]
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(type="log", title_text=AXIS_TITLES[MACS], row=1, col=i)
        fig.update_yaxes(type="log", title_text=AXIS_TITLES[c], row=1, col=i)
    fig.update_layout(
        title="Measured costs vs MACs: where MACs mislead (each network once, trained or not)",
        height=420,
    )
    return fig


def hypervolume_figure(df: pd.DataFrame, study: optuna.Study) -> go.Figure:
    a = study.user_attrs
    objectives = a.get("objectives", list(DEFAULT_OBJECTIVES))
    if list(objectives) != list(DEFAULT_OBJECTIVES):
        fig = go.Figure()
        fig.update_layout(title="Hypervolume", height=200)
        return _empty(
            fig,
            f"drawn for accuracy and MACs only; this study optimises {', '.join(objectives)}",
        )
    ref = hypervolume_reference(a["space"], a.get("max_mmacs"))
    ok = df[df["val_accuracy"].notna()].sort_values("trial")
    hv = hypervolume_history(zip(ok["val_accuracy"], ok[MACS]), ref)
    fig = go.Figure(go.Scatter(x=ok["trial"], y=hv, mode="lines+markers"))
    if ok.empty:
        _empty(fig, "no trained trial yet")
    fig.update_layout(
        title=(
            f"Hypervolume after each trained trial (reference fixed for the study: accuracy "
            f"{REF_ACCURACY}, {ref[1]:,.1f} MMACs = 1.1 x its largest trainable network; "
            "area in accuracy x log10 MMACs)"
        ),
        xaxis={"title": "trial number", "tickformat": "d"},
        yaxis={"title": "hypervolume"},
        height=380,
    )
    return fig


def importance_figure(study: optuna.Study) -> go.Figure:
    usable = usable_trials(study)
    labels = study.metric_names or ["validation accuracy", MACS]
    fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels)
    note = None
    if len(usable) < 3:
        note = f"needs at least 3 trained trials ({len(usable)} so far)"
        _empty(fig, note)
    else:
        copy = optuna.create_study(directions=study.directions)
        copy.add_trials(usable)
        # PED-ANOVA (Optuna's default) rates what leads to LOW targets: negate accuracy.
        targets = [lambda t: -t.values[0]]
        targets += [(lambda t, i=i: t.values[i]) for i in range(1, len(labels))]
        for col, target in enumerate(targets, start=1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    imp = optuna.importance.get_param_importances(copy, target=target)
            except (RuntimeError, ValueError) as e:
                note = f"importances unavailable: {e}"
                break
            names = list(imp)[::-1]
            fig.add_trace(
                go.Bar(x=[imp[n] for n in names], y=names, orientation="h", showlegend=False),
                row=1,
                col=col,
            )
    title = "Parameter importances (PED-ANOVA) for each objective"
    if note is None and len(usable) < MIN_TRUSTED_TRIALS:
        note = (
            f"from {len(usable)} trained trials, whose top 10% is "
            f"{max(1, len(usable) // 10)}: a rough guide"
        )
    fig.update_layout(title=f"{title}: {note}" if note else title, height=360)
    return fig


def dependence_figure(df: pd.DataFrame) -> go.Figure:
    trained = df[df["val_accuracy"].notna()]
    cols = (
        ("growth_rate", "growth rate k"),
        ("total_convs", "convs, all blocks"),
        ("compression", "compression theta"),
    )
    fig = make_subplots(
        rows=2,
        cols=3,
        shared_xaxes="columns",
        vertical_spacing=0.08,
        subplot_titles=[label for _, label in cols] + ["", "", ""],
    )
    for c, (col, _) in enumerate(cols, start=1):
        for r, y in ((1, "val_accuracy"), (2, MACS)):
            fig.add_trace(
                _dots(trained[col], trained[y], _hover(trained)),
                row=r,
                col=c,
            )
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_yaxes(title_text=MACS, type="log", row=2)
    fig.update_layout(title="How accuracy and MACs follow each parameter", height=620)
    if trained.empty:
        _empty(fig, "no trained trial yet")
    return fig


def write_report(study: optuna.Study, out: Path, table_format: str | None = None) -> dict:
    """Write the HTML page, the Pareto CSV (and the full table); return what was written."""
    df = trials_frame(study)
    a = study.user_attrs
    objectives = list(a.get("objectives", DEFAULT_OBJECTIVES))
    cost_cols = [OBJECTIVE_COLUMNS[n] for n in objectives[1:]]
    out.parent.mkdir(parents=True, exist_ok=True)
    front = df[df["status"] == "pareto"].sort_values(cost_cols[0])
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

    counts = df["status"].value_counts().to_dict()
    budget = a.get("budget") or {}
    max_mmacs = a.get("max_mmacs")
    trained = int(df["val_accuracy"].notna().sum())
    cautions = []
    if budget.get("name") == "smoke":
        cautions.append(
            "This study uses the <b>smoke</b> budget (seconds per trial on a CPU): its "
            "accuracies rank nothing; search with <code>short</code> or <code>long</code> "
            "on a GPU to compare architectures."
        )
    if trained < MIN_TRUSTED_TRIALS:
        cautions.append(
            f"Only {trained} trained trial{'s' if trained != 1 else ''}: the front, the "
            "importances and the trends below are rough; they firm up past "
            f"{MIN_TRUSTED_TRIALS} trials."
        )
    summary = (
        f"<p>{len(df)} trials: {counts.get('pareto', 0)} on the Pareto front, "
        f"{counts.get('dominated', 0)} dominated, "
        f"{counts.get('not trained (over MAC budget)', 0) + counts.get(OVER_OTHER, 0)} over a "
        "budget (not trained), "
        f"{counts.get('duplicate (not trained again)', 0)} repeating a trained network (its "
        f"values reused), {counts.get('fail', 0)} failed, {counts.get('running', 0)} "
        "running.<br>"
        f"{escape(describe_budget(budget))}<br>"
        "Budgets: "
        + escape(describe_limits(max_mmacs, a.get("limits") or {}))
        + ".<br>Objectives: validation accuracy on "
        f"{budget.get('val_images', 10_000):,} images of a fixed 10k validation split of "
        "the training set (the test set is not used; maximised), and "
        + " and ".join(
            f"{escape(METRICS[n].label)}: {escape(METRICS[n].how)}" for n in objectives[1:]
        )
        + " (minimised). Every trial also measures the other costs (table and plots below)."
        "</p>" + "".join(f'<p class="caution">{c}</p>' for c in cautions)
    )
    stdev = (a.get("seed_stdev") or {}).get("stdev")
    figures = [
        *(pareto_figure(df, linked_refinements(study), stdev, x=c) for c in cost_cols),
        costs_figure(df),
        hypervolume_figure(df, study),
        importance_figure(study),
        dependence_figure(df),
    ]
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"fig{i}")
        for i, fig in enumerate(figures)
    ]
    table = front.drop(columns=["status", "fail_reason"]).to_html(
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
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}
.caution{{background:#fff3cd;border-left:4px solid #e0a800;padding:6px 10px}}</style>
</head><body>
<h1>Study {escape(study.study_name)}</h1>
<p>Written {stamp} by nas.report.</p>
{summary}
{"".join(parts[: len(cost_cols)])}
<h2>Pareto trials</h2>
{table}
{"".join(parts[len(cost_cols) :])}
{failed_html}
</body></html>
"""
    out.write_text(html)
    return written


def _run(argv: list[str] | None) -> int:
    p = make_parser("nas.report", __doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument("--out", help="HTML file to write (default dashboards/STUDY.html)")
    p.add_argument(
        "--format",
        choices=("csv", "parquet"),
        help="also write the full trial table (parquet needs pyarrow: pip install pyarrow)",
    )
    p.add_argument("--artifacts", help="artifact folder (default studies/STUDY-artifacts)")
    p.add_argument("--no-artifacts", action="store_true", help="do not store artifacts")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.storage or default_storage_url(args.study)
    study = load_study(open_storage(url, must_exist=True), args.study)
    out = Path(args.out or f"dashboards/{args.study}.html")
    try:
        written = write_report(study, out, args.format)
    except OSError as e:
        raise UsageError(f"cannot write the report: {e.strerror or e}") from None
    if not args.no_artifacts:
        folder = Path(args.artifacts) if args.artifacts else default_artifact_dir(args.study)
        replace_study_file(study, folder, out)
        for t in pareto_front(study):
            data = json.dumps(t.user_attrs["config"], indent=2) + "\n"
            attach_trial_file(study, t, folder, f"config-trial{t.number}.json", data)
        written["artifacts"] = folder
    for kind, path in written.items():
        print(f"{kind:<11} {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.report", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
