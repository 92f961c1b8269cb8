"""nas.report: the page, its tables and artifacts, and the plot as a real browser draws it."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.artifacts import get_all_artifact_meta

from browser import chromium, screenshot
from nas.report import main
from nas.results.figures import hypervolume_figure, log_ticks, pareto_figure
from nas.results.front import hypervolume_history, pareto_front
from nas.results.table import MACS, OVER_BUDGET_ACCURACY, OVER_TRAINED, trials_frame
from nas.search import main as search

TINY = ["--preset", "cifar", "--growth-rate", "8:16:4", "--convs", "1:3", "--budget", "smoke"]


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, real_data_dir) -> Path:
    d = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{d}/r.db"
    # 10 random trials, some over a 15 MMAC budget: front, dominated and untrained points
    argv = [*TINY, "--trials", "10", "--max-mmacs", "15", "--sampler", "random", "--seed", "1"]
    assert search([*argv, "--study", "r", "--storage", url]) == 0
    return d


def study(d: Path) -> optuna.Study:
    return optuna.load_study(study_name="r", storage=f"sqlite:///{d}/r.db")


def test_frame_and_files(study_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(study_dir)
    assert (
        main(["--study", "r", "--storage", f"sqlite:///{study_dir}/r.db", "--format", "csv"]) == 0
    )
    html = (study_dir / "dashboards" / "r.html").read_text()
    assert not re.search(r"<script[^>]+src=", html)  # plotly.js inlined: opens offline
    assert len(html) > 1_000_000 and "Plotly.newPlot" in html
    assert "MACs (fvcore)" in html and "Hypervolume" in html and "PED-ANOVA" in html
    s = study(study_dir)
    front = {t.number for t in pareto_front(s)}
    csv = pd.read_csv(study_dir / "dashboards" / "r-pareto.csv")
    assert set(csv["trial"]) == front and (csv["status"] == "pareto").all()
    full = pd.read_csv(study_dir / "dashboards" / "r-trials.csv")
    assert len(full) == len(s.trials)
    over = full[full["status"] == "not trained (over MAC budget)"]
    assert len(over) > 0 and (over[MACS] > 15).all() and over["val_accuracy"].isna().all()
    out = capsys.readouterr().out
    assert "html" in out and "pareto_csv" in out and "artifacts" in out


def test_artifacts_for_dashboard(study_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(study_dir)
    url = f"sqlite:///{study_dir}/r.db"
    for _ in range(2):  # a second report replaces the page, adds no duplicate configs
        assert main(["--study", "r", "--storage", url]) == 0
    s = study(study_dir)
    attrs = s._storage.get_study_system_attrs(s._study_id)
    pages = [json.loads(v) for k, v in attrs.items() if k.startswith("artifacts:")]
    assert [p["filename"] for p in pages] == ["r.html"]  # one record, none retired to null
    # Optuna's own reader, which a null record broke, lists the page once
    assert [m.filename for m in get_all_artifact_meta(s)] == ["r.html"]
    configs = [json.loads(v) for k, v in attrs.items() if k.startswith("dashboard:artifacts:")]
    front = pareto_front(s)
    assert sorted(c["filename"] for c in configs) == sorted(
        f"config-trial{t.number}.json" for t in front
    )
    folder = study_dir / "studies" / "r-artifacts"
    stored = {p.name for p in folder.iterdir()}
    assert {c["artifact_id"] for c in configs} | {p["artifact_id"] for p in pages if p} == stored
    t = front[0]
    c = next(c for c in configs if c["filename"] == f"config-trial{t.number}.json")
    assert json.loads((folder / c["artifact_id"]).read_text()) == t.user_attrs["config"]


def test_log_ticks_are_round_and_cover_the_values() -> None:
    assert log_ticks(pd.Series([4.1, 37.0])) == [2, 5, 10, 20, 50]
    wide = log_ticks(pd.Series([0.9, 130.4, 2000.0]))
    assert wide[0] <= 0.9 and wide[-1] >= 2000 and {1, 2, 5, 100, 200, 500} <= set(wide)
    assert 3 not in wide  # 1-2-5 where that gives ticks enough
    # a narrow range still gets labelled ticks (1-2-5 has none between 3.1 and 4.0)
    narrow = log_ticks(pd.Series([3.1, 3.45, 4.0]))
    assert len(narrow) >= 3 and narrow[0] <= 3.1 and narrow[-1] >= 4.0
    assert all(f"{v:g}" in {"3.1", "3.2", "3.3", "3.4", "3.5", "3.6", "3.7", "3.8", "3.9", "4"}
               for v in narrow)  # fmt: skip
    assert log_ticks(pd.Series([], dtype=float)) == []


def test_pareto_plot_of_a_budgeted_study(cost_study) -> None:
    """Networks over the budget sit on the strip below the plot at no accuracy (not at an
    invented one on the accuracy axis); the budget is a dashed line on its own axis; a
    2-objective front is a staircase, a 3-objective front is marked, not joined."""
    url, name = cost_study
    study = optuna.load_study(study_name=name, storage=url)
    df = trials_frame(study)
    over = df[df["status"] == "not trained (over a budget)"]
    assert len(over) == 3  # conftest: 3 of 6 over 65,000 params
    fig = pareto_figure(df, x="params", budget=65000.0)
    strip = [t for t in fig.data if t.name == "not trained (over budget)"]
    assert len(strip) == 1 and strip[0].yaxis == "y2" and set(strip[0].y) == {0.0}
    on_accuracy = [t for t in fig.data if t.yaxis in (None, "y") and t.y is not None]
    assert all(len(t.x) == 0 or min(t.y) > 0 for t in on_accuracy)
    lines = [sh for sh in fig.layout.shapes if sh.line.dash == "dash"]
    assert lines and all(sh.x0 == 65000.0 for sh in lines)  # a shape takes the value
    front = next(t for t in fig.data if t.name == "Pareto front")
    assert front.mode == "lines+markers" and front.line.shape == "hv"
    three = pareto_figure(df, x="CPU latency (ms)", three=True)
    front = next(t for t in three.data if t.name.startswith("on the 3-objective front"))
    assert front.mode == "markers"


def test_a_trained_network_over_a_budget_is_never_labelled_not_trained(cost_study) -> None:
    """A network trained and then found over a budget (its memory, known only after
    training): the table and the strip say "trained, over a budget", not "not trained"
    (the report once labelled every such network "not trained (over MAC budget)")."""
    from conftest import add_trained_infeasible_trial

    url, name = cost_study
    copy, number = add_trained_infeasible_trial(
        optuna.load_study(study_name=name, storage=url), "m"
    )
    copy.set_user_attr("limits", {"params": 65000.0, "memory_mb": 10.0})  # both limits
    df = trials_frame(copy)
    status = dict(zip(df["trial"], df["status"]))
    assert status[number] == OVER_TRAINED
    assert all(s != OVER_TRAINED for n, s in status.items() if n != number)
    fig = pareto_figure(df, x="params", budget=65000.0)
    strips = {t.name: t for t in fig.data if t.yaxis == "y2"}
    assert set(strips) == {"not trained (over budget)", OVER_TRAINED}
    assert list(strips[OVER_TRAINED].x) == list(df.loc[df["trial"] == number, "params"])
    assert "trained, but over a budget" in strips[OVER_TRAINED].hovertext[0]
    # its accuracy is shown, apart from the front's: in the table and on the strip
    accuracy = copy.trials[number].values[0]
    row = df.loc[df["trial"] == number].iloc[0]
    assert row[OVER_BUDGET_ACCURACY] == accuracy and pd.isna(row["val_accuracy"])
    assert f"val acc {accuracy:.4f} (not on the front" in strips[OVER_TRAINED].hovertext[0]
    assert df[OVER_BUDGET_ACCURACY].notna().sum() == 1  # no other trial is so


def test_hypervolume_against_brute_force() -> None:
    """The incremental hypervolume equals the area a grid of slabs gives, step by step."""
    rng = random.Random(3)
    points = [(rng.uniform(0.1, 0.95), 10 ** rng.uniform(0, 3)) for _ in range(60)]
    ref = (0.2, 1500.0)
    history = hypervolume_history(points, ref)
    for k in (1, 5, 20, 60):
        seen = [(a, math.log10(m)) for a, m in points[:k] if a > ref[0] and m < ref[1]]
        xs = sorted({x for _, x in seen} | {math.log10(ref[1])})
        area = 0.0
        for left, right in zip(xs, xs[1:]):  # each slab: the best accuracy left of it
            top = max((a for a, x in seen if x <= left), default=ref[0])
            area += (right - left) * (top - ref[0])
        assert history[k - 1] == pytest.approx(area, rel=1e-12, abs=1e-12)


def test_a_latency_study_gets_its_hypervolume_and_three_objectives_a_line(cost_study) -> None:
    url, name = cost_study
    study = optuna.load_study(study_name=name, storage=url)
    fig = hypervolume_figure(trials_frame(study), study)
    assert fig is not None and len(fig.data) == 1 and len(fig.data[0].y) >= 2
    assert "log10 CPU latency (ms)" in fig.layout.title.text
    study.set_user_attr("objectives", ["accuracy", "macs", "latency-cpu"])
    try:
        assert hypervolume_figure(trials_frame(study), study) is None
    finally:
        study.set_user_attr("objectives", ["accuracy", "latency-cpu"])


def test_latencies_timed_beside_other_trials_carry_a_caution(tmp_path: Path, real_data_dir):
    """Two trials at once on one host: the report says their latencies include the other's
    load; one at a time: it does not; and a CPU study's table has no GPU column."""
    from nas.search import main as search

    for k in (1, 2):
        url = f"sqlite:///{tmp_path}/k{k}.db"
        argv = [*TINY, "--trials", "2", "--concurrency", str(k), "--study", "k"]
        assert search([*argv, "--storage", url]) == 0
        out = tmp_path / f"k{k}.html"
        assert main(["--study", "k", "--storage", url, "--out", str(out), "--no-artifacts"]) == 0
        html = out.read_text()
        caution = "timed while other trials ran on the same host" in html
        assert caution == (k == 2), k
        table = html[html.index('<div class="wide">') :]
        table = table[: table.index("</div>")]
        assert "GPU latency" not in table and "CPU latency (ms)" in table


def test_unknown_study_and_missing_db(study_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["--study", "nope", "--storage", f"sqlite:///{study_dir}/r.db"]) == 2
    assert "no study named 'nope'" in capsys.readouterr().err
    assert main(["--study", "r", "--storage", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no study database at" in capsys.readouterr().err


def test_report_plot_in_a_real_browser(study_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(study_dir)
    assert main(["--study", "r", "--storage", f"sqlite:///{study_dir}/r.db"]) == 0
    df = trials_frame(study(study_dir))
    driver = chromium()
    try:
        driver.get((study_dir / "dashboards" / "r.html").as_uri())
        traces = driver.execute_script(
            "return document.getElementById('fig0').calcdata"
            ".map(c => [c[0].trace.name, c.filter(p => p.x !== undefined).length])"
        )
        drawn = driver.execute_script(
            "return document.querySelectorAll('#fig0 .scatterlayer .point').length"
        )
        # hover the front's first point (lowest MACs) and read the label Plotly draws
        hover = driver.execute_script(
            "const g = document.getElementById('fig0');"
            "const c = g.data.findIndex(t => t.name === 'Pareto front');"
            "Plotly.Fx.hover(g, [{curveNumber: c, pointNumber: 0}]);"
            "return g.querySelector('.hoverlayer .hovertext').textContent"
        )
        screenshot(driver, "report")
    finally:
        driver.quit()
    counts = dict(traces)
    trained = df[df["val_accuracy"].notna()]
    assert counts["Pareto front"] == (df["status"] == "pareto").sum()
    assert counts["dominated"] == (df["status"] == "dominated").sum()
    over = counts["not trained (over budget)"]  # on the strip below the plot
    assert over == (df["status"] == "not trained (over MAC budget)").sum()
    assert drawn == len(trained) + over  # SVG points
    first = df[df["status"] == "pareto"].sort_values(MACS).iloc[0]
    assert f"trial {first['trial']}" in hover
    assert f"val accuracy {first['val_accuracy']:.4f}" in hover
    assert f"{first[MACS]:,.1f} MMACs (fvcore)" in hover
    assert f"{int(first['params']):,} params" in hover and f"k={first['growth_rate']}" in hover


def test_small_and_all_infeasible_study_says_what_it_cannot_show(tmp_path: Path) -> None:
    """Every trial over the MAC budget: no 'nan' anywhere, the x marks labelled in the
    legend, each empty plot saying why, the budgets in words, the smoke caveat."""
    url = f"sqlite:///{tmp_path}/e.db"
    argv = ["--preset", "tiny", "--budget", "smoke", "--max-mmacs", "1", "--trials", "2"]
    assert search([*argv, "--study", "e", "--storage", url]) == 0
    out = tmp_path / "e.html"
    assert main(["--study", "e", "--storage", url, "--out", str(out), "--no-artifacts"]) == 0
    html = out.read_text()
    figures = html[html.index("Plotly.newPlot") :]  # the page after plotly.js itself
    assert not re.search(r"\bnan\b", figures, re.IGNORECASE)
    assert "Budgets: MACs &lt;= 1 MMACs (fvcore)." in html
    assert "Train budget smoke: 16 steps of 32 images (512)" in html
    assert "accuracies rank nothing" in html and "Only 0 trained trials" in html
    assert "validation accuracy on at most 500 images of the data's fixed validation" in html
    assert "Data: fashion-mnist, 28x28x1 images in 10 classes; 50,000 train, 10,000" in html
    driver = chromium()
    try:
        driver.get(out.as_uri())
        legend = driver.execute_script(
            "return [...document.querySelectorAll('#fig0 .legendtext')].map(e => e.textContent)"
        )
        notes = driver.execute_script(
            "return [...document.querySelectorAll('.annotation-text')].map(e => e.textContent)"
        )
        screenshot(driver, "report-all-infeasible")
    finally:
        driver.quit()
    assert legend == ["not trained (over budget)"]  # empty traces keep out
    assert "no trained trial yet: nothing to rank" in notes
    assert "needs at least 3 trained trials (0 so far)" in notes


def test_report_in_the_study_objectives_with_costs_against_macs(cost_study, tmp_path) -> None:
    """A study of accuracy vs CPU latency under a parameter budget (conftest): the front is
    drawn against latency, the costs-vs-MACs panel prints the rank correlation the trials
    give, the Pareto CSV carries the measured costs, and the hypervolume says why not."""
    from nas.results.front import kendall_tau, spearman_rho

    url, name = cost_study
    out = tmp_path / "c.html"
    assert main(["--study", name, "--storage", url, "--out", str(out), "--no-artifacts"]) == 0
    df = trials_frame(optuna.load_study(study_name=name, storage=url))
    lat = "CPU latency (ms)"
    pareto = pd.read_csv(tmp_path / "c-pareto.csv")
    assert len(pareto) and pareto[lat].notna().all() and pareto[MACS].notna().all()
    assert list(pareto[lat]) == sorted(pareto[lat])  # cheapest in the study's cost first
    spread = "CPU latency spread (IQR / median)"  # how steady each timing was
    assert pareto[spread].notna().all() and (pareto[spread] >= 0).all()
    timed = df[df[lat].notna()]
    assert len(timed) == 6  # every network: latency is the study's objective
    rho, tau = (
        spearman_rho(list(timed[MACS]), list(timed[lat])),
        kendall_tau(list(timed[MACS]), list(timed[lat])),
    )
    driver = chromium()
    try:
        driver.get(out.as_uri())
        xtitle = driver.execute_script(
            "return document.getElementById('fig0')._fullLayout.xaxis2.title.text"
        )
        front = driver.execute_script(  # the x of each drawn front point
            "return document.getElementById('fig0').calcdata"
            ".find(c => c[0].trace.name === 'Pareto front').map(p => p.x)"
        )
        text = "[...document.querySelectorAll('#fig{} .annotation-text')].map(e => e.textContent)"
        titles = driver.execute_script(f"return {text.format(1)}")
        points = driver.execute_script(
            "return document.querySelectorAll('#fig1 .scatterlayer .point').length"
        )
        hypervolume = driver.execute_script(
            "return document.getElementById('fig2')._fullLayout.title.text"
        )
        screenshot(driver, "report-latency-objective")
    finally:
        driver.quit()
    assert xtitle.startswith("CPU latency, ms per image, batch 1, one thread")
    assert sorted(front) == pytest.approx(sorted(pareto[lat]), rel=1e-12)
    assert f"CPU latency: rho {rho:.2f}, tau {tau:.2f} (6 networks)" in titles
    assert points == 6
    assert "area in accuracy x log10 CPU latency (ms)" in hypervolume
