"""The report's figures (plotly), one public function each: the Pareto front, the costs
against each other, the hypervolume over trials, the importance of each parameter, and
accuracy against each parameter."""

from __future__ import annotations

import math
import statistics
import warnings

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nas.results.front import (
    REF_ACCURACY,
    REF_MACS_FACTOR,
    hypervolume_history,
    hypervolume_reference,
    usable_trials,
)
from nas.results.table import (
    DUPLICATE,
    LOWER_RUNG_ACCURACY,
    MACS,
    OBJECTIVE_COLUMNS,
    OVER_BUDGET_ACCURACY,
    OVER_MACS,
    OVER_OTHER,
    OVER_TRAINED,
    rank_agreement,
)
from nas.study.metrics import COSTS, Limits
from nas.study.record import StudyRecord

__all__ = [
    "AXIS_TITLES",
    "MIN_TRUSTED_TRIALS",
    "TICK_STEPS",
    "axis_limit",
    "costs_figure",
    "dependence_figure",
    "hypervolume_figure",
    "hypervolume_reference_for",
    "importance_figure",
    "log_axis",
    "log_ticks",
    "pareto_figure",
]

AXIS_TITLES = {m.col: m.axis for m in COSTS.values() if m.axis}  # table column -> title


MIN_TRUSTED_TRIALS = 20  # fewer trained trials: the page says its plots are rough


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


TICK_STEPS = ((1, 2, 5), (1, 2, 3, 5, 7), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9))


def log_ticks(values: pd.Series) -> list[float]:
    """Round ticks for a log axis, each written out in full (10, 20, 50: Plotly's own read
    10, 2, 5): 1-2-5 per decade (1 per decade past 15 ticks), finer where the values span
    too little for three ticks (3.1 to 4.0 ms gets 3.1, 3.2, ...), with one tick at or
    below the smallest value and one at or above the largest, so that no point lies
    outside the ticks."""
    values = values[values > 0]
    if values.empty:
        return []
    lo, hi = float(values.min()), float(values.max())
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)

    def bracketed(steps: tuple[float, ...]) -> list[float]:
        ticks = sorted({round(m * 10.0**e, 12) for e in decades for m in steps})
        below = max(t for t in ticks if t <= lo)
        above = min(t for t in ticks if t >= hi)
        return [t for t in ticks if below <= t <= above]

    fine = tuple(round(1 + 0.1 * i, 1) for i in range(90))
    for steps in (*TICK_STEPS, fine):
        shown = bracketed(steps)
        if len(shown) >= 3 or lo == hi:
            break
    return bracketed((1,)) if len(shown) > 15 else shown


def log_axis(values: pd.Series, title: str) -> dict:
    """A log axis with log_ticks, its range just wider than the ticks."""
    ticks = log_ticks(values)
    axis: dict = {"type": "log", "title": title}
    if ticks:
        axis.update(
            tickvals=ticks,
            ticktext=[f"{v:g}" for v in ticks],
            range=[math.log10(ticks[0]) - 0.03, math.log10(ticks[-1]) + 0.03],
        )
    return axis


def pareto_figure(
    df: pd.DataFrame,
    refined: dict[str, dict[int, list[float]]] | None = None,
    seed_stdev: float | None = None,
    x: str = MACS,
    budget: float | None = None,
    three: bool = False,
) -> go.Figure:
    """Accuracy against the cost in column `x` (MACs, or another objective of the study);
    the front is the study's, in all its objectives: with three, the points of the 3-D
    front are marked, not joined (a 2-D staircase would mislead). Networks not trained
    (over a budget), and those trained but over one, sit on a strip of their own below
    the plot, at no accuracy; `budget`,
    the study's budget on this cost, is a dashed line. seed_stdev: the study's measured
    per-run noise (nas.refine --seeds), drawn as +-1 stdev error bars."""
    over = df[df["status"].isin([OVER_MACS, OVER_OTHER, OVER_TRAINED]) & df[x].notna()]
    rows = 2 if len(over) else 1  # the strip only where there is something to put on it
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.87, 0.13] if rows == 2 else None,
        vertical_spacing=0.04,
    )
    trained = df[df["val_accuracy"].notna() & df[x].notna()]
    lower = df[df[LOWER_RUNG_ACCURACY].notna() & df[x].notna()]
    if not lower.empty:  # a halving search's shorter runs, behind the top rung's
        faint = {"symbol": "circle-open", "color": "#c5ccd3", "size": 7}
        fig.add_trace(
            _points(lower, lower[LOWER_RUNG_ACCURACY], "lower rungs (shorter runs)", faint, x=x),
            row=1,
            col=1,
        )
    _trained_traces(fig, trained, x, seed_stdev, three)
    if len(over):
        _over_budget_strip(fig, over, x)
    for name, runs in (refined or {}).items():
        _refined_traces(fig, trained, x, name, runs)
    ref = trained[trained["reference"]]
    if not ref.empty:
        star = {"symbol": "star", "color": "#ffbf00", "size": 18, "line": {"width": 1}}
        fig.add_trace(
            _points(ref, ref["val_accuracy"], "d2l chapter's network (reference)", star, x=x),
            row=1,
            col=1,
        )
    if budget is not None:
        # on a log axis an annotation takes log10 of the value, a shape the value itself
        fig.add_vline(x=budget, line={"dash": "dash", "color": "#555"}, row="all", col=1)
        fig.add_annotation(
            x=math.log10(budget), y=1, yref="y domain", text=f"budget {budget:g}",
            showarrow=False, xanchor="left", yanchor="top", row=1, col=1,
        )  # fmt: skip
    label = AXIS_TITLES.get(x, x)
    values = pd.concat([df[x].dropna(), pd.Series([budget] if budget else [], dtype=float)])
    fig.update_xaxes(type="log", row=1, col=1)
    fig.update_xaxes(**log_axis(values, f"{label} (log scale)"), row=rows, col=1)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    if rows == 2:
        fig.update_yaxes(
            title_text="over<br>budget", showticklabels=False, range=[-1, 1],
            title_font={"size": 10}, row=2, col=1,
        )  # fmt: skip
    fig.update_layout(
        title=f"Validation accuracy vs {label.split(',')[0]}", height=560, showlegend=True
    )
    if trained.empty:
        fig.update_yaxes(range=[0, 1], row=1, col=1)
        _empty(fig, "no trained trial yet: nothing to rank")
    return fig


def _trained_traces(
    fig: go.Figure, trained: pd.DataFrame, x: str, seed_stdev: float | None, three: bool
) -> None:
    bars = {"type": "constant", "value": seed_stdev or 0.0, "visible": seed_stdev is not None}
    dominated = trained[trained["status"] == "dominated"]
    front = trained[trained["status"] == "pareto"].sort_values(x)
    grey = {"color": "#9aa5b1", "size": 8}
    fig.add_trace(
        _points(dominated, dominated["val_accuracy"], "dominated", grey, x=x, error_y=bars),
        row=1,
        col=1,
    )
    name = "on the 3-objective front (all three)" if three else "Pareto front"
    shape = {"mode": "markers"} if three else {"mode": "lines+markers", "line": {"shape": "hv"}}
    fig.add_trace(
        _points(
            front,
            front["val_accuracy"],
            name + (f" (bars: seed stdev {seed_stdev:.4f})" if seed_stdev else ""),
            {"color": "#d62728", "size": 11},
            x=x,
            error_y=bars,
            **shape,
        ),
        row=1,
        col=1,
    )


def _over_budget_strip(fig: go.Figure, over: pd.DataFrame, x: str) -> None:
    """Networks over a budget, on the strip below at y=0: those it kept from training,
    and those trained but found over one (their accuracy does not count)."""
    trained = over["status"] == OVER_TRAINED
    for rows, name, marker, words in (
        (over[~trained], "not trained (over budget)", "x", "not trained: over a budget"),
        (over[trained], OVER_TRAINED, "x-open", "trained, but over a budget"),
    ):
        if rows.empty:
            continue
        fig.add_trace(
            _points(
                rows,
                [0.0] * len(rows),
                name,
                {"symbol": marker, "color": "#444", "size": 8},
                x=x,
                hovertext=[
                    f"{h}<br>{words}" + _accuracy_apart(acc)
                    for h, acc in zip(_hover(rows), rows[OVER_BUDGET_ACCURACY])
                ],
            ),
            row=2,
            col=1,
        )


def _accuracy_apart(accuracy: float | None) -> str:
    """A trained network over a budget: its accuracy, said not to count."""
    if accuracy is None or pd.isna(accuracy):
        return ""
    return f"<br>val acc {accuracy:.4f} (not on the front: over today's budget)"


def _refined_traces(
    fig: go.Figure, trained: pd.DataFrame, x: str, budget: str, runs: dict[int, list[float]]
) -> None:
    """nas.refine's runs at a higher budget: mean and seed stdev, dotted from the cheap value."""
    rows = trained[trained["trial"].isin(list(runs))]
    means = [statistics.fmean(runs[n]) for n in rows["trial"]]
    sds = [statistics.stdev(runs[n]) if len(runs[n]) > 1 else 0.0 for n in rows["trial"]]
    seeds = max(len(v) for v in runs.values())
    xs, ys = [], []
    for (_, r), m in zip(rows.iterrows(), means):
        xs += [r[x], r[x], None]
        ys += [r["val_accuracy"], m, None]
    dotted = {"color": "#2ca02c", "width": 1, "dash": "dot"}
    fig.add_trace(
        go.Scatter(x=xs, y=ys, mode="lines", line=dotted, hoverinfo="skip", showlegend=False),
        row=1,
        col=1,
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
        ),
        row=1,
        col=1,
    )


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


def costs_figure(df: pd.DataFrame, contended: bool = False) -> go.Figure:
    """Where MACs mislead: each measured cost against MACs, log-log, with the rank
    correlation between them (1: MACs order networks exactly as the cost does).
    `contended`: some costs were timed with other trials running on the same host."""
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
            f"{c.split(' (')[0]}: rho {rho:.2f}, tau {tau:.2f} ({n} networks)"
            if n >= 3
            else f"{c.split(' (')[0]}: {n} networks, too few to rank"
        )
    fig = make_subplots(rows=1, cols=len(cols), subplot_titles=titles, horizontal_spacing=0.1)
    for i, c in enumerate(cols, start=1):
        rows = df[df[c].notna() & (df["status"] != DUPLICATE)]
        hover = [f"{h}<br>{c} {v:.3g}" for h, v in zip(_hover(rows), rows[c])]
        fig.add_trace(_dots(rows[MACS], rows[c], hover), row=1, col=i)
        fig.update_xaxes(**log_axis(rows[MACS], "MMACs (fvcore)"), row=1, col=i)
        fig.update_yaxes(**log_axis(rows[c], c), row=1, col=i)
    title = "Measured costs vs MACs, each network once (Spearman rho, Kendall tau)"
    if contended:
        title += "<br><sup>CAUTION: timed while other trials ran on the same host</sup>"
    fig.update_layout(title=title, height=440)
    return fig


def hypervolume_reference_for(df: pd.DataFrame, study: optuna.Study, col: str) -> float:
    """The reference cost of the hypervolume in column `col`: for MACs fixed by the study's
    space and MAC limit (nas.results.front.hypervolume_reference); for a measured cost,
    REF_MACS_FACTOR x the largest measured (it grows with the study, and the page says so)."""
    s = StudyRecord.of(study)
    if col == MACS and s.space:
        return hypervolume_reference(s.space, Limits.from_dict(s.limits).get("macs"))[1]
    return REF_MACS_FACTOR * float(df[col].max())


def hypervolume_figure(df: pd.DataFrame, study: optuna.Study) -> go.Figure | None:
    """The hypervolume after each trained trial, in accuracy x log10 of the study's cost;
    None for a study of three objectives (the page says why in a line)."""
    objectives = StudyRecord.of(study).objectives
    if len(objectives) != 2:
        return None
    col = OBJECTIVE_COLUMNS[objectives[1]]
    ok = df[df["val_accuracy"].notna() & df[col].notna()].sort_values("trial")
    fig = go.Figure()
    if ok.empty:
        fig.update_layout(title="Hypervolume", height=220)
        return _empty(fig, "no trained trial yet")
    ref = hypervolume_reference_for(df, study, col)
    hv = hypervolume_history(zip(ok["val_accuracy"], ok[col]), (REF_ACCURACY, ref))
    fig.add_trace(go.Scatter(x=ok["trial"], y=hv, mode="lines+markers"))
    how = "fixed for the study" if col == MACS else "1.1 x the largest measured so far"
    fig.update_layout(
        title=(
            f"Hypervolume after each trained trial<br><sup>area in accuracy x log10 "
            f"{col} above accuracy {REF_ACCURACY} and below {ref:,.4g} ({how})</sup>"
        ),
        xaxis={"title": "trial number", "tickformat": "d", "dtick": max(1, len(ok) // 10)},
        yaxis={"title": "hypervolume", "rangemode": "tozero"},
        height=380,
    )
    return fig


def importance_figure(study: optuna.Study) -> go.Figure:
    usable = usable_trials(study)
    labels = study.metric_names or ["validation accuracy", MACS]
    fig = make_subplots(rows=len(labels), cols=1, subplot_titles=labels, vertical_spacing=0.12)
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
                row=col,
                col=1,
            )
    title = "Parameter importances (PED-ANOVA) for each objective"
    if note is None and len(usable) < MIN_TRUSTED_TRIALS:
        note = (
            f"from {len(usable)} trained trials, whose top 10% is "
            f"{max(1, len(usable) // 10)}: a rough guide"
        )
    fig.update_layout(
        title=f"{title}<br><sup>{note}</sup>" if note else title, height=220 * len(labels) + 80
    )
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
    for c in (1, 2, 3):
        fig.update_yaxes(**log_axis(trained[MACS], MACS if c == 1 else ""), row=2, col=c)
    fig.update_layout(title="How accuracy and MACs follow each parameter", height=620)
    if trained.empty:
        _empty(fig, "no trained trial yet")
    return fig


def axis_limit(s: StudyRecord, col: str) -> float | None:
    """The study's cost limit on the cost in table column `col`, in that column's unit."""
    limits = Limits.from_dict(s.limits)
    return next((limits.get(key) for key, m in COSTS.items() if m.col == col), None)
