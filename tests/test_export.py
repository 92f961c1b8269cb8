"""nas.export: picks, the file format, and that the file rebuilds the recorded network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from conftest import TINY, add_trained_infeasible_trial, argv_with
from nas import cost
from nas.arch.config import ArchConfig
from nas.export import SCHEMA, main
from nas.results.front import knee_index, pareto_front, usable_trials
from nas.search import main as search
from nas.study.storage import open_storage


@pytest.fixture(scope="module")
def study_url(tmp_path_factory, real_data_dir) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('export')}/s.db"
    assert (
        search(
            [
                *TINY,
                "--trials",
                "6",
                "--study",
                "s",
                "--storage",
                url,
                "--sampler",
                "random",
                "--seed",
                "1",
                "--max-mmacs",
                "15",
            ]
        )
        == 0
    )
    return url


def export(url: str, tmp_path: Path, pick: str) -> dict:
    out = tmp_path / f"{pick}.json"
    assert main(["--study", "s", "--storage", url, "--out", str(out), "--pick", pick]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("pick", ["accuracy", "knee", "max-mmacs=7"])
def test_export_rebuilds_the_recorded_network(study_url: str, tmp_path: Path, pick: str) -> None:
    rec = export(study_url, tmp_path, pick)
    assert rec["schema"] == SCHEMA and rec["study"] == "s" and rec["pick"] == pick
    trial = optuna.load_study(study_name="s", storage=study_url).trials[rec["trial"]]
    assert rec["config"] == trial.user_attrs["config"]
    assert rec["metrics"]["val_accuracy"] == trial.values[0]
    rebuilt = cost.measure_cost(ArchConfig.from_dict(rec["config"]))
    assert rebuilt.params == trial.user_attrs["params"] == rec["metrics"]["params"]
    assert rebuilt.fvcore_macs / 1e6 == pytest.approx(trial.values[1])
    assert rec["provenance"]["budget"]["name"] == "smoke"
    assert rec["provenance"]["versions"]["optuna"].startswith("5.")
    assert rec["costs"] == trial.user_attrs["costs"] and rec["objectives"] == ["accuracy", "macs"]
    assert rec["costs"]["latency_cpu"]["unit"] == "ms"
    # nas.cost reads the export file as it is
    assert cost.main([str(tmp_path / f"{pick}.json"), "--json"]) == 0


def test_picks_mean_what_they_say(study_url: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="s", storage=study_url)
    usable = usable_trials(study)
    assert usable and all(t.user_attrs["trained"] for t in usable)
    best = max(t.values[0] for t in usable)
    assert export(study_url, tmp_path, "accuracy")["metrics"]["val_accuracy"] == best
    small = export(study_url, tmp_path, "max-mmacs=7")
    assert small["metrics"]["mmacs_fvcore"] <= 7
    assert small["metrics"]["val_accuracy"] == max(t.values[0] for t in usable if t.values[1] <= 7)
    knee = export(study_url, tmp_path, "knee")
    front = pareto_front(study)
    assert knee["trial"] == front[knee_index([(t.values[0], t.values[1]) for t in front])].number


def test_a_trained_infeasible_trial_is_never_exported(study_url: str, tmp_path: Path) -> None:
    """A network trained and then found over a budget (as one over --max-memory-mb is),
    more accurate and cheaper than every other: no pick may return it."""
    source = optuna.load_study(study_name="s", storage=study_url)
    _, infeasible = add_trained_infeasible_trial(source, "inf")
    for pick in ("accuracy", "knee", "max-mmacs=7"):
        out = tmp_path / f"{pick}.json"
        argv = ["--study", "inf", "--storage", study_url, "--out", str(out), "--pick", pick]
        assert main(argv) == 0
        assert json.loads(out.read_text())["trial"] != infeasible, pick


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--study", "nope"], "no study named 'nope'"),
        (["--pick", "best"], "unknown --pick 'best'"),
        (["--pick", "max-mmacs=abc"], "needs a number"),
        (["--pick", "max-mmacs=-5"], "needs a positive number"),
        (["--pick", "max-mmacs=0.001"], "no trained trial has at most 0.001 MMACs"),
        (["--out", "/nonexistent/dir/x.json"], "folder /nonexistent/dir does not exist"),
    ],
)
def test_bad_export_input(study_url: str, tmp_path: Path, capsys, args, message) -> None:
    base = {"--study": "s", "--storage": study_url, "--out": str(tmp_path / "o.json")}
    assert main(argv_with(base, args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.export: error: ") and message in err and err.count("\n") == 1


def test_missing_database(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/none.db"
    assert main(["--study", "s", "--storage", url, "--out", str(tmp_path / "o.json")]) == 2
    assert "no study database at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_open_storage_creates_nothing_for_must_exist(tmp_path: Path) -> None:
    from nas.errors import UsageError

    with pytest.raises(UsageError):
        open_storage(f"sqlite:///{tmp_path}/sub/none.db", must_exist=True)
    assert not (tmp_path / "sub").exists()


def test_a_printed_number_typed_back_means_what_it_says(study_url: str, tmp_path, capsys):
    """'the smallest has X': --pick max-mmacs=X then picks that trial (X was rounded
    to one decimal before, and typed back it excluded the very trial it named)."""
    base = ["--study", "s", "--storage", study_url, "--out", str(tmp_path / "o.json")]
    assert main([*base, "--pick", "max-mmacs=0.001"]) == 2
    smallest = re.search(r"the smallest has ([\d.]+)", capsys.readouterr().err)[1]
    assert main([*base, "--pick", f"max-mmacs={smallest}"]) == 0
    record = json.loads((tmp_path / "o.json").read_text())
    assert f"{record['metrics']['mmacs_fvcore']:.6f}" == smallest
    # a study of MACs alone is not timed as shipped unless asked (--time-shipped yes)
    assert "latency_cpu_shipped" not in record["costs"]
    assert "as shipped" not in capsys.readouterr().out


def test_pick_accuracy_within_measured_noise(tmp_path: Path) -> None:
    """With a measured seed stdev of 0.002 (one run per trial: differences under
    2 * 0.002 * sqrt(2) = 0.00566 are noise), --pick accuracy takes the cheapest trial
    within noise of the best; without a measured noise, the best."""
    from nas.results.picks import pick_trial

    study = optuna.create_study(
        study_name="n", storage=f"sqlite:///{tmp_path}/n.db", directions=["maximize", "minimize"]
    )
    for acc, mmacs in ((0.900, 100.0), (0.896, 40.0), (0.893, 20.0), (0.880, 5.0)):
        study.add_trial(
            optuna.trial.create_trial(
                values=[acc, mmacs], user_attrs={"trained": True, "config": {}}
            )
        )
    assert pick_trial(study, "accuracy").trial.values == [0.900, 100.0]
    study.set_user_attr("seed_stdev", {"stdev": 0.002, "seeds": 3, "of": 4})
    assert pick_trial(study, "accuracy").trial.values == [0.896, 40.0]


def test_export_of_a_latency_study_carries_its_costs(cost_study, tmp_path: Path, capsys) -> None:
    """A study of accuracy vs CPU latency (conftest): --pick accuracy is the most accurate
    feasible trial, its record carries every measured cost and the study's objectives, and
    the pick is timed as shipped (its CPU package in a fresh process), printed beside the
    search's eager figure and stored."""
    url, name = cost_study
    out = tmp_path / "best.json"
    assert main(["--study", name, "--storage", url, "--out", str(out), "--pick", "accuracy"]) == 0
    rec = json.loads(out.read_text())
    shipped = rec["costs"]["latency_cpu_shipped"]
    assert "AOTInductor package, fresh process" in shipped["device"] and shipped["rounds"] >= 1
    eager = rec["costs"]["latency_cpu"]["value"]
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith(f"CPU latency {shipped['value']:.3g} ms per image as shipped (")
    assert f"the search timed the eager network at {eager:.3g} ms" in line
    study = optuna.load_study(study_name=name, storage=url)
    trial = study.trials[rec["trial"]]
    assert trial.user_attrs["params"] <= 65000 and trial.user_attrs["trained"]
    assert rec["objectives"] == ["accuracy", "latency-cpu"]
    assert rec["costs"]["latency_cpu"]["value"] == trial.values[1]
    assert rec["metrics"]["mmacs_fvcore"] == trial.user_attrs["macs_fvcore"] / 1e6


def test_budget_picks_on_the_study_objectives_and_the_working_shown(
    cost_study, tmp_path: Path, capsys
) -> None:
    """--pick max-latency-ms=N on an accuracy vs CPU latency study: the most accurate
    within N ms; the line names the study's objectives and the runner-up."""
    url, name = cost_study
    study = optuna.load_study(study_name=name, storage=url)
    usable = usable_trials(study)
    latency = {t.number: t.user_attrs["costs"]["latency_cpu"]["value"] for t in usable}
    limit = sorted(latency.values())[len(latency) // 2]  # about half of them within
    out = tmp_path / "lat.json"
    capsys.readouterr()
    argv = ["--study", name, "--storage", url, "--out", str(out), "--time-shipped", "no"]
    assert main([*argv, "--pick", f"max-latency-ms={limit}"]) == 0
    rec = json.loads(out.read_text())
    within = [t for t in usable if latency[t.number] <= limit]
    assert rec["trial"] == max(within, key=lambda t: t.values[0]).number
    assert rec["working"]["rule"].startswith(
        f"the most accurate with latency_cpu (as shipped, where timed) <= {limit:g} ms"
    )
    line = capsys.readouterr().out
    assert f"trial {rec['trial']}: val_accuracy" in line and "CPU latency (ms)" in line
    assert "MMACs" not in line.splitlines()[0]
    assert main([*argv, "--pick", "max-params=1"]) == 2  # a count, as --max-params
    assert "no trained trial has at most 1 parameters" in capsys.readouterr().err
    assert main([*argv, "--pick", "max-latency=3"]) == 2
    assert "use accuracy, knee, max-mmacs=N, max-params=N, max-latency-ms=N" in (
        capsys.readouterr().err
    )


def test_the_knee_is_for_two_objectives(tmp_path: Path) -> None:
    from nas.errors import UsageError
    from nas.results.picks import pick_trial

    study = optuna.create_study(
        study_name="three",
        storage=f"sqlite:///{tmp_path}/t.db",
        directions=["maximize", "minimize", "minimize"],
    )
    study.set_user_attr("objectives", ["accuracy", "macs", "latency-cpu"])
    for acc, macs, ms in ((0.9, 100.0, 3.0), (0.8, 10.0, 1.0), (0.85, 50.0, 0.5)):
        study.add_trial(
            optuna.trial.create_trial(values=[acc, macs, ms], user_attrs={"trained": True})
        )
    with pytest.raises(UsageError, match="--pick knee needs a study of two objectives"):
        pick_trial(study, "knee")
    assert pick_trial(study, "accuracy").trial.values == [0.9, 100.0, 3.0]


def test_the_knee_pick_is_the_knee_not_the_most_accurate(tmp_path: Path) -> None:
    """An L-shaped front (tests/results/test_front.py): the knee is (0.88, 40 MMACs), not the most
    accurate (0.895, 160)."""
    from nas.results.picks import pick_trial

    study = optuna.create_study(
        study_name="l", storage=f"sqlite:///{tmp_path}/l.db", directions=["maximize", "minimize"]
    )
    study.set_user_attr("objectives", ["accuracy", "macs"])  # as nas.search records them
    for acc, macs in ((0.84, 20.0), (0.88, 40.0), (0.89, 80.0), (0.895, 160.0), (0.85, 90.0)):
        study.add_trial(
            optuna.trial.create_trial(values=[acc, macs], user_attrs={"trained": True})
        )
    chosen = pick_trial(study, "knee")
    assert chosen.trial.values == [0.88, 40.0]
    assert chosen.working["runner_up"]["values"] == {"accuracy": 0.895, "macs": 160.0}
