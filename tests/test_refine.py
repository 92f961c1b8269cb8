"""nas.refine end to end on a real smoke study (CPU, real Fashion-MNIST), the report's
refined points in headless Chromium, and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from browser import chromium, screenshot
from conftest import add_trained_infeasible_trial, argv_with
from nas.refine import main
from nas.report import main as report
from nas.results.front import most_promising, usable_trials
from nas.search import main as search

SMALL = ["--preset", "tiny", "--growth-rate", "8:12:4", "--convs", "1:2", "--budget", "smoke"]


@pytest.fixture(scope="module")
def url(tmp_path_factory, real_data_dir) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('refine')}/r.db"
    argv = [*SMALL, "--trials", "5", "--sampler", "random", "--seed", "3"]
    assert search([*argv, "--study", "r", "--storage", url]) == 0
    return url


def test_refine_trains_the_chosen_at_the_higher_budget_and_resumes(url: str, capsys) -> None:
    argv = ["--study", "r", "--storage", url, "--budget", "smoke-long", "--top", "3"]
    assert main([*argv, "--seeds", "2"]) == 0
    out, err = capsys.readouterr()
    refined = optuna.load_study(study_name="r-refined-smoke-long", storage=url)
    assert refined.user_attrs["source_study"] == "r"
    assert refined.user_attrs["budget"]["name"] == "smoke-long"
    source = optuna.load_study(study_name="r", storage=url)
    trials = refined.trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    pairs = sorted((t.user_attrs["source_trial"], t.user_attrs["seed"]) for t in trials)
    sources = sorted({s for s, _ in pairs})
    assert pairs == [(s, seed) for s in sources for seed in (0, 1)]
    for t in trials:  # the same network as its source trial, trained at the higher budget
        assert t.params == source.trials[t.user_attrs["source_trial"]].params
        assert t.user_attrs["trained"] is True
    # the two seeds of one network are two trainings, not one reused
    by_source = {}
    for t in trials:
        by_source.setdefault(t.user_attrs["source_trial"], []).append(t.user_attrs["final_loss"])
    assert all(a != b for a, b in by_source.values())
    assert "Kendall tau between the two budgets over these 3:" in out
    assert "A new study created" not in err  # Optuna's own log stays quiet
    assert "seed noise at smoke-long: stdev" in out
    assert refined.user_attrs["seed_stdev"]["seeds"] == 2
    for s in sources:
        assert f"\n{s:>5}  " in out  # one line per refined architecture

    assert main([*argv, "--seeds", "2"]) == 0  # nothing left: resumes to no work
    assert "0 runs to go" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="r-refined-smoke-long", storage=url).trials) == 6


def test_report_draws_the_refined_points(url: str, tmp_path: Path) -> None:
    if not optuna.study.get_all_study_names(url).count("r-refined-smoke-long"):
        argv = ["--study", "r", "--storage", url, "--budget", "smoke-long", "--top", "3"]
        assert main([*argv, "--seeds", "2"]) == 0
    out = tmp_path / "r.html"
    assert report(["--study", "r", "--storage", url, "--out", str(out), "--no-artifacts"]) == 0
    driver = chromium()
    try:
        driver.get(out.as_uri())
        trace = driver.execute_script(
            "const g = document.getElementById('fig0');"
            "const t = g.data.find(t => (t.name || '').startsWith('refined at'));"
            "return t && [t.name, t.y.length, t.error_y.visible];"
        )
        screenshot(driver, "report-refined")
    finally:
        driver.quit()
    assert trace == ["refined at smoke-long (mean of 2 seeds)", 3, True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "smoke"], "already has budget 'smoke'"),
        (["--top", "1"], "--top must be in 2..1000"),
        (["--seeds", "0"], "--seeds must be in 1..20"),
        (["--study", "nope"], "no study named 'nope'"),
    ],
)
def test_bad_refine_input(url: str, capsys, args: list[str], message: str) -> None:
    base = {"--study": "r", "--storage": url, "--budget": "smoke-long"}
    assert main(argv_with(base, args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.refine: error: ") and message in err and err.count("\n") == 1


def test_the_refined_are_exactly_the_most_promising_usable_trials(url: str) -> None:
    """A copy of the study with a trained but infeasible network, the most accurate and
    the cheapest (as one over a memory budget is): refine trains exactly the trials
    most_promising picks among the usable ones, never that one."""
    source, infeasible = add_trained_infeasible_trial(
        optuna.load_study(study_name="r", storage=url), "ri"
    )
    usable = usable_trials(source)
    points = [(t.values[0], t.user_attrs["macs_fvcore"] / 1e6) for t in usable]
    chosen = {usable[i].number for i in most_promising(points, 2)}
    assert main(["--study", "ri", "--storage", url, "--budget", "smoke-long", "--top", "2"]) == 0
    refined = optuna.load_study(study_name="ri-refined-smoke-long", storage=url)
    assert {t.user_attrs["source_trial"] for t in refined.trials} == chosen
    assert infeasible not in chosen


def test_refined_study_reports_its_noise(url: str, tmp_path: Path) -> None:
    """The linked study knows its seed noise: its report draws it on every point."""
    if not optuna.study.get_all_study_names(url).count("r-refined-smoke-long"):
        argv = ["--study", "r", "--storage", url, "--budget", "smoke-long", "--top", "3"]
        assert main([*argv, "--seeds", "2"]) == 0
    out = tmp_path / "refined.html"
    argv = ["--study", "r-refined-smoke-long", "--storage", url, "--out", str(out)]
    assert report([*argv, "--no-artifacts"]) == 0
    stdev = optuna.load_study(study_name="r-refined-smoke-long", storage=url).user_attrs[
        "seed_stdev"
    ]["stdev"]
    assert f"Pareto front (bars: seed stdev {stdev:.4f})" in out.read_text()


def test_summary_of_two_architectures_prints_no_tau() -> None:
    """Over two architectures Kendall tau can only be +1 or -1: it is not printed."""
    from nas.refine import summary

    def study(budget: str) -> optuna.Study:
        s = optuna.create_study(directions=["maximize", "minimize"])
        s.set_user_attr("budget", {"name": budget})
        s.set_user_attr("objectives", ["accuracy", "macs"])
        return s

    source, refined = study("smoke"), study("smoke-long")
    for acc, mmacs in ((0.30, 10.0), (0.35, 20.0)):
        source.add_trial(
            optuna.trial.create_trial(
                values=[acc, mmacs], user_attrs={"trained": True, "macs_fvcore": mmacs * 1e6}
            )
        )
    for n, acc in ((0, 0.70), (1, 0.66)):
        refined.add_trial(
            optuna.trial.create_trial(
                values=[acc, source.trials[n].values[1]],
                user_attrs={
                    "trained": True,
                    "source_trial": n,
                    "seed": 0,
                    "macs_fvcore": source.trials[n].values[1] * 1e6,
                },
            )
        )
    text = summary(source, source.trials, refined, 1)
    assert "Kendall tau: needs at least 3 refined architectures (2 here)" in text
    assert "drops off" in text and "stays" in text  # 0.66 at 20 MMACs loses to 0.70 at 10


def test_refine_keeps_the_source_objectives_and_budgets(cost_study, capsys) -> None:
    """An accuracy vs CPU latency study under a parameter budget is refined in accuracy
    and CPU latency: the linked study records them, the candidates are chosen in them,
    and the table and the front are in CPU latency, not MACs."""
    url, name = cost_study
    optuna.copy_study(from_study_name=name, from_storage=url, to_storage=url, to_study_name="cr")
    source = optuna.load_study(study_name="cr", storage=url)
    usable = usable_trials(source)
    chosen = {usable[i].number for i in most_promising([tuple(t.values) for t in usable], 2)}
    capsys.readouterr()
    assert main(["--study", "cr", "--storage", url, "--budget", "smoke-long", "--top", "2"]) == 0
    out = capsys.readouterr().out
    refined = optuna.load_study(study_name="cr-refined-smoke-long", storage=url)
    assert refined.user_attrs["objectives"] == ["accuracy", "latency-cpu"]
    assert refined.user_attrs["limits"] == {"params": 65000.0}
    assert refined.metric_names == ["val_accuracy", "CPU latency (ms)"]
    assert {t.user_attrs["source_trial"] for t in refined.trials} == chosen
    header = [line for line in out.splitlines() if line.split()[:2] == ["trial", "CPU"]]
    assert header and header[0].split()[:4] == ["trial", "CPU", "latency", "(ms)"]


def test_export_sees_the_refined_runs_and_shows_its_working(url: str, tmp_path, capsys) -> None:
    """`nas.export --study S --pick accuracy` after a refine: by the refined means and the
    pooled seed noise, with the rule, mean, sigma, n and the runner-up printed and stored."""
    import json
    import statistics

    from nas.export import main as export

    if "r-refined-smoke-long" not in optuna.study.get_all_study_names(url):
        argv = ["--study", "r", "--storage", url, "--budget", "smoke-long", "--top", "3"]
        assert main([*argv, "--seeds", "2"]) == 0
    refined = optuna.load_study(study_name="r-refined-smoke-long", storage=url)
    runs: dict[int, list[float]] = {}
    for t in refined.trials:
        runs.setdefault(t.user_attrs["source_trial"], []).append(t.values[0])
    capsys.readouterr()
    out = tmp_path / "best.json"
    assert export(["--study", "r", "--storage", url, "--out", str(out), "--pick", "accuracy"]) == 0
    w = json.loads(out.read_text())["working"]
    assert w["runs"] == "refined runs at budget 'smoke-long' (study 'r-refined-smoke-long')"
    assert w["trial"] in runs and w["n"] == 2
    assert w["mean"] == pytest.approx(statistics.fmean(runs[w["trial"]]), abs=1e-12)
    assert w["sigma"] == pytest.approx(refined.user_attrs["seed_stdev"]["stdev"], abs=1e-12)
    assert w["runner_up"]["trial"] in runs and w["runner_up"]["trial"] != w["trial"]
    line = capsys.readouterr().out
    assert "(mean of 2)" in line and "rule: " in line and "next by the same rule: trial" in line
