"""nas.search end to end on real Fashion-MNIST (smoke budget, CPU), and its bad inputs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import COST_STUDY_ARGS, TINY
from nas.arch.config import ArchConfig
from nas.arch.macs import measure_cost
from nas.results.front import pareto_front
from nas.search import main
from nas.study.storage import METRIC_NAMES


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_readme_demo(tmp_path: Path, monkeypatch, real_data_dir, capsys) -> None:
    """The README's first command, as written: 3 smoke trials of the tiny preset into
    studies/demo.db (about 10 s on two CPU cores)."""
    monkeypatch.chdir(tmp_path)
    assert main(["--trials", "3", "--budget", "smoke", "--preset", "tiny", "--study", "demo"]) == 0
    assert (tmp_path / "studies" / "demo.db").is_file()
    study = load("sqlite:///studies/demo.db", "demo")
    trials = complete(study)
    assert len(trials) == 3 and len(study.trials) == 3
    assert study.metric_names == METRIC_NAMES
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["budget"]["name"] == "smoke"
    assert study.user_attrs["space"]["preset"] == "tiny"
    for t in trials:
        acc, mmacs = t.values
        assert 0.0 < acc <= 1.0
        cost = measure_cost(ArchConfig.from_dict(t.user_attrs["config"]))
        assert mmacs == pytest.approx(cost.fvcore_macs / 1e6)
        assert t.user_attrs["params"] == cost.params
        assert t.user_attrs["macs_fvcore"] == cost.fvcore_macs
        if "duplicate_of" in t.user_attrs:  # 576 networks: a repeat is rare, and allowed
            assert t.values == trials[t.user_attrs["duplicate_of"]].values
            continue
        assert t.user_attrs["trained"] is True and t.user_attrs["images_per_second"] > 0
    out = capsys.readouterr().out
    assert re.search(r"trial    0  k=\d+ convs=\d-\d-\d theta=[\d.]+ bottleneck  val acc 0\.", out)
    assert re.search(r"train \d+\.\d s at [\d,]+ img/s, whole trial \d+\.\d s", out)
    assert "3 trials in" in out and "next: python -m nas.report --study demo\n" in out
    # nothing to warn about but what the demo budget is
    (note,) = [line for line in out.splitlines() if line.startswith("note:")]
    assert note.startswith("note: budget 'smoke' trains each network for 16 steps"), note


def test_preflight_notes(real_data) -> None:
    """What a user hears before the first trial: a GPU budget on a CPU (with an estimate
    from a measured step), a MAC budget no network meets, a space beyond reach, more
    workers than cores."""
    import os

    import torch

    from nas.parallel.run import preflight
    from nas.search import parse_args

    cpu = torch.device("cpu")
    spec = parse_args(["--preset", "tiny", "--budget", "short"])[0].spec
    [note] = preflight(spec, 100, cpu, real_data)
    m = re.search(r"meant for a GPU\. On this CPU one training step of .* took ([\d.]+) s", note)
    assert m and float(m[1]) > 0 and "100 such trials for about" in note
    [note] = preflight(spec, 1, cpu, real_data)  # one trial, in words that say one
    assert "1 such trial for about" in note and " 0 min" not in note and "0.0 h" not in note
    spec = parse_args(["--preset", "tiny", "--budget", "smoke", "--max-mmacs", "0.5"])[0].spec
    [note] = preflight(spec, 1, cpu, real_data)
    assert "below the smallest network of this space (3.385982 MMACs (fvcore))" in note
    spec = parse_args(["--budget", "smoke", "--convs", "1:100"])[0].spec
    [note] = preflight(spec, 1, cpu, real_data)
    assert "this space reaches 294," in note
    many = str((os.cpu_count() or 1) + 1)
    spec = parse_args(["--preset", "tiny", "--budget", "smoke", "--workers", many])[0].spec
    [note] = preflight(spec, 1, cpu, real_data)
    assert f"{many} workers share" in note


def test_progress_lines_of_a_long_trial(capsys) -> None:
    import torch

    from nas.study.objective import TrialProgress

    progress = TrialProgress("trial    7", total_steps=10, batch=32, first=0, every=0)
    progress(3, torch.zeros(()))
    out = capsys.readouterr().out
    assert re.fullmatch(
        r"trial    7: 128 of 320 images, \d+ s, about \d+ s of training left\n", out
    )
    quiet = TrialProgress("trial    8", total_steps=10, batch=32)  # first line after 30 s
    quiet(3, torch.zeros(()))
    assert capsys.readouterr().out == ""


def test_resume_continues_the_study(tmp_path: Path, real_data_dir) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    assert main([*TINY, "--trials", "2", "--study", "s", "--storage", url]) == 0
    assert main([*TINY, "--trials", "2", "--study", "s", "--storage", url]) == 0
    trials = complete(load(url, "s"))
    assert [t.number for t in trials] == [0, 1, 2, 3]
    # the second run's sampler is not a replay of the first's (seed offset by trial count)
    assert [t.params for t in trials[:2]] != [t.params for t in trials[2:]]


def test_other_budget_is_refused_and_study_untouched(tmp_path: Path, real_data_dir, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    assert main([*TINY, "--trials", "1", "--study", "s", "--storage", url]) == 0
    capsys.readouterr()
    argv = [*TINY[:-2], "--budget", "short", "--trials", "1", "--study", "s", "--storage", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.search: error: study 's' was created with another train budget")
    assert "name 'smoke' there, 'short' here" in err
    assert err.count("\n") == 1
    study = load(url, "s")
    assert len(study.trials) == 1 and study.user_attrs["budget"]["name"] == "smoke"


def test_mac_budget_marks_infeasible_and_skips_training(tmp_path: Path, real_data_dir, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    # 8:12:4 x 1:2 convs spans 3.2 to 17.8 MMACs: a 7 MMAC budget splits it
    argv = [
        *TINY,
        "--trials",
        "6",
        "--study",
        "s",
        "--storage",
        url,
        "--max-mmacs",
        "7",
        "--sampler",
        "random",
        "--seed",
        "1",
    ]
    assert main(argv) == 0
    trials = complete(load(url, "s"))
    assert len(trials) == 6
    over = [t for t in trials if t.values[1] > 7]
    under = [t for t in trials if t.values[1] <= 7]
    assert over and under
    for t in over:
        assert t.user_attrs["trained"] is False and t.values[0] == 0.0
        assert t.constraints["mmacs_over_budget"] > 0
        assert "train_seconds" not in t.user_attrs
    for t in under:
        assert t.user_attrs["trained"] is True and t.constraints["mmacs_over_budget"] <= 0
    out = capsys.readouterr().out
    shown = re.findall(
        r"  ([\d.]+) MMACs \(fvcore\), [^\n]*  over the MAC budget, not trained", out
    )
    assert len(shown) == len(over) and all(float(v) > 7 for v in shown)  # read above it
    assert min(len(v.split(".")[1]) for v in shown) < 6  # not 8.169248: as many as needed
    study = load(url, "s")
    assert {t.number for t in study.best_trials} <= {t.number for t in under}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--preset", "d2l", "--growth-rate", "8:16:8", "--convs", "1:1"], "search space (preset"),
        (["--budget", "smoke-long"], "train budget (name 'smoke' there, 'smoke-long' here"),
        (["--convs", "1:3"], "convs_per_block [1, 2] there, [1, 3] here"),
    ],
)
def test_other_experiment_is_refused_and_study_untouched(
    tmp_path: Path, real_data_dir, capsys, change: list[str], message: str
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    assert main([*TINY, "--trials", "1", "--study", "s", "--storage", url]) == 0
    before = load(url, "s").user_attrs
    capsys.readouterr()
    assert main([*TINY, *change, "--trials", "1", "--study", "s", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.search: error: study 's' was created with another ")
    assert message in err and "would not be comparable" in err and err.count("\n") == 1
    study = load(url, "s")
    assert len(study.trials) == 1 and study.user_attrs == before


def test_cost_budgets_change_on_a_study_and_every_trial_is_judged_by_the_new_ones(
    tmp_path: Path, real_data_dir, capsys
) -> None:
    """A cost budget changes no training, only which trials are feasible: a study takes a
    new one, records the history, and judges its stored trials by it; with no feasible
    trial the summary says which budget excluded how many, and the cheapest cost."""
    url = f"sqlite:///{tmp_path}/s.db"
    args = [*TINY, "--study", "s", "--storage", url, "--sampler", "random", "--seed", "0"]
    assert main([*args, "--trials", "2", "--max-params", "1"]) == 0  # no network fits
    out = capsys.readouterr().out
    assert "Pareto front: 0 trials" in out
    assert re.search(r"no trial is within the budgets: --max-params 1 excluded 2 of 2 "
                     r"\(the cheapest measured: [\d.e+]+ parameters\)", out)  # fmt: skip
    assert main([*args, "--trials", "1", "--max-params", "10000000"]) == 0
    out = capsys.readouterr().out
    assert "note: budgets changed from params <= 1 to params <= 10,000,000" in out
    study = load(url, "s")
    assert study.user_attrs["limits"] == {"params": 10_000_000.0}
    assert [h["limits"] for h in study.user_attrs["limits_history"]] == [
        {"params": 1.0},
        {"params": 10_000_000.0},
    ]
    assert [t.number for t in pareto_front(study)] == [2]  # the one trained since
    from nas.results.table import OVER_EARLIER, OVER_OTHER, OVER_TRAINED, trials_frame

    status = dict(zip(*trials_frame(study)[["trial", "status"]].T.values))
    assert status[0] == status[1] == OVER_EARLIER  # within the budget now, not trained then
    assert main([*args, "--trials", "1", "--max-params", "1"]) == 0  # and back again
    assert "no trial is within the budgets: --max-params 1 excluded 4 of 4" in (
        capsys.readouterr().out
    )
    assert pareto_front(load(url, "s")) == []
    status = dict(zip(*trials_frame(load(url, "s"))[["trial", "status"]].T.values))
    assert status[2] == OVER_TRAINED  # trained under the budget of its day: over it now
    assert status[0] == status[1] == status[3] == OVER_OTHER  # never trained


def test_other_precision_or_split_is_refused(tmp_path: Path, real_data_dir, capsys, monkeypatch):
    """A GPU host's bf16 study refuses a CPU worker; another validation split is refused."""
    import nas.data.dataset

    url = f"sqlite:///{tmp_path}/s.db"
    assert main([*TINY, "--trials", "1", "--study", "s", "--storage", url]) == 0
    study = load(url, "s")
    assert study.user_attrs["precision"] == "fp32 (CPU)"
    study.set_user_attr("precision", "bf16 autocast (CUDA)")  # as a GPU host records it
    capsys.readouterr()
    assert main([*TINY, "--trials", "1", "--study", "s", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "another training precision ('bf16 autocast (CUDA)' there, 'fp32 (CPU)' here)" in err
    study.set_user_attr("precision", "fp32 (CPU)")
    monkeypatch.setattr(nas.data.dataset, "SPLIT_SEED", 1)  # as a version with another split would
    assert main([*TINY, "--trials", "1", "--study", "s", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "another data (the images, their splits and normalisation) (" in err
    assert "val_from 'held out of train by key 0: " in err
    assert err.count("\n") == 1 and len(load(url, "s").trials) == 1


def test_max_mflops_is_refused_with_its_new_name(capsys) -> None:
    assert main([*TINY, "--max-mflops", "50"]) == 2
    err = capsys.readouterr().err
    assert "--max-mflops is now --max-mmacs" in err and "multiply-adds" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials: expected a positive integer"),
        (["--trials", "ten"], "--trials: expected a positive integer"),
        (["--preset", "resnet"], "--preset: invalid choice"),
        (["--sampler", "cmaes"], "--sampler: invalid choice"),
        (["--budget", "huge"], "--budget: invalid choice"),
        (["--device", "tpu"], "--device: invalid choice"),
        (["--seed", "-1"], "--seed: expected an integer >= 0"),
        (["--concurrency", "0"], "--concurrency: expected auto or 1..16"),
        (["--concurrency", "17"], "--concurrency: expected auto or 1..16"),
        (["--max-latency-ms", "-1"], "--max-latency-ms: expected a positive number, or none to"),
        (["--max-params", "0"], "--max-params: expected a positive number"),
        (["--latency-device", "tpu"], "--latency-device: invalid choice"),
        (["--objectives", "accuracy,flops"], "unknown objective 'flops'; choose from accuracy"),
        (["--objectives", "accuracy,macs,params,latency-cpu"], "two or three objectives, not 4"),
        (["--objectives", "macs,params"], "must include accuracy"),
        (["--objectives", "accuracy,accuracy"], "an objective is named twice"),
        (
            ["--objectives", "accuracy,latency-gpu", "--device", "cpu"],
            "GPU latency is measured on a GPU",
        ),
        (["--max-memory-mb", "900", "--device", "cpu"], "training memory is measured on a GPU"),
        (
            ["--max-latency-ms", "5", "--latency-device", "gpu", "--device", "cpu"],
            "GPU latency is measured on a GPU",
        ),
        (["--concurrency", "many"], "--concurrency: expected auto or 1..16"),
        (["--max-mmacs", "-5"], "--max-mmacs: expected a positive number"),
        (["--max-mmacs", "nan"], "--max-mmacs: expected a positive number"),
        (["--study", "../etc/passwd"], "study name '../etc/passwd' must be"),
        (["--growth-rate", "a:b"], "a range takes integers"),
        (["--growth-rate", "64:8"], "low 64 > high 8"),
        (["--convs", "1:500"], "must be in [1, 128]"),
        (["--compression", "0:1:0.5"], "must lie in (0, 1]"),
        (["--space", "/nonexistent/space.toml"], "cannot read search-space file"),
        (["--data-dir", "/nonexistent"], "Fashion-MNIST folder /nonexistent does not exist"),
        (["--data-dir", "/etc/hostname"], "/etc/hostname is a file, not a folder"),
        (["--storage", "not a url"], "malformed storage URL"),
        (["--storage", "nosuchdb://x/y"], "cannot open storage"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch, capsys, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trials", "1", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nas.search: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


def test_cuda_without_gpu_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--trials", "1", "--device", "cuda"]) == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err


def test_help_explains(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("--trials", "--max-mmacs", "MACs (fvcore)", "presets:", "smoke"):
        assert word in out


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("growth_rate = [8, 64", "is not valid TOML"),
        ("growth_rate = [8, 64, 8]\ndepth = 121", "unknown search-space key(s) depth"),
        ("num_blocks = 100000000000", "num_blocks must be in [1, 8]"),
        ("image_size = 2", "spatial size reaches 0"),
        ('convs_per_block = ["1", "2"]', "must hold integers"),
        ("a = " + "[" * 10000 + "]" * 10000, "is not valid TOML"),
    ],
)
def test_bad_space_file_is_one_line(tmp_path, monkeypatch, capsys, toml, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "space.toml").write_text(toml)
    assert main([*TINY, "--trials", "1", "--space", "space.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.search: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "studies").exists()


def test_corrupt_dataset_is_one_line(tmp_path, monkeypatch, capsys, tiny_data_dir) -> None:
    monkeypatch.chdir(tmp_path)
    (tiny_data_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert main([*TINY, "--trials", "1", "--data-dir", str(tiny_data_dir)]) == 2
    err = capsys.readouterr().err
    assert "corrupt IDX file" in err and "apt-get install dataset-fashion-mnist" in err
    assert err.count("\n") == 1 and not (tmp_path / "studies").exists()


def test_a_network_already_trained_is_not_trained_again(tmp_path: Path, capsys) -> None:
    """A space of one architecture: 3 trials, 1 trained; the others take its values and
    say whose, and the report and the front count it once."""
    url = f"sqlite:///{tmp_path}/d.db"
    one = ["--preset", "tiny", "--growth-rate", "8:8", "--convs", "1:1"]
    one += ["--compression", "0.5:0.5:0.25", "--budget", "smoke", "--trials", "3"]
    assert main([*one, "--study", "d", "--storage", url]) == 0
    trials = complete(load(url, "d"))
    assert len(trials) == 3
    first, *rest = trials
    assert first.user_attrs["trained"] is True and "duplicate_of" not in first.user_attrs
    for t in rest:
        assert t.user_attrs["duplicate_of"] == first.number and t.values == first.values
        assert (
            t.user_attrs["trained"] is False
            and t.user_attrs["config"] == first.user_attrs["config"]
        )
        assert "train_seconds" not in t.user_attrs  # nothing was trained
    out = capsys.readouterr().out
    assert out.count("the network of trial 0: its values, not trained again") == 2
    assert "(0 failed, 2 repeating a trained network, 1 worker x 1 at once)" in out
    assert "Pareto front: 1 trial (" in out


def test_latency_objective_and_params_budget_end_to_end(cost_study, capsys) -> None:
    """--objectives accuracy,latency-cpu --max-params 65000 (conftest): the study optimises
    CPU latency, networks over the budget are not trained (but timed: latency is an
    objective), the front is the
    non-dominated trained set in accuracy and latency, and the study keeps its objectives
    and budgets."""
    from nas.results.front import pareto_front

    url, name = cost_study
    study = load(url, name)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "CPU latency (ms)"]
    assert study.user_attrs["objectives"] == ["accuracy", "latency-cpu"]
    assert study.user_attrs["limits"] == {"params": 65000.0}
    trials = complete(study)
    assert len(trials) == 6
    over = [t for t in trials if t.user_attrs["params"] > 65000]
    under = [t for t in trials if t.user_attrs["params"] <= 65000]
    assert len(over) == 3 and len(under) == 3
    for t in over:  # not trained; timed all the same: latency is an objective
        assert t.user_attrs["trained"] is False and t.user_attrs["over_budget"] == ["params"]
        assert t.values[0] == 0.0 and t.constraints["params_over_budget"] > 0
        assert "train_seconds" not in t.user_attrs
    for t in under:
        assert t.user_attrs["trained"] is True and t.constraints["params_over_budget"] <= 0
    for t in trials:
        lat = t.user_attrs["costs"]["latency_cpu"]
        assert t.values[1] == lat["value"] > 0 and lat["unit"] == "ms"
        assert 5 <= lat["runs"] <= 21 and "1 thread" in lat["device"]
        assert t.user_attrs["costs"]["params"]["value"] == t.user_attrs["params"] / 1e6
    # the front: trained trials no other beats on both accuracy and latency
    by_hand = {
        t.number
        for t in under
        if not any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
            for o in under
        )
    }
    assert {t.number for t in pareto_front(study)} == by_hand
    # the same study with other objectives is refused, untouched (other cost budgets are
    # taken: test_cost_budgets_change_on_a_study_and_every_trial_is_judged_by_the_new_ones)
    base = [*COST_STUDY_ARGS, "--study", name, "--storage", url, "--trials", "1"]
    assert main([*base, "--objectives", "accuracy,macs"]) == 2
    assert "objectives" in capsys.readouterr().err
    assert len(load(url, name).trials) == 6


def test_a_one_trial_run_speaks_plainly(tmp_path: Path, real_data_dir) -> None:
    """What a user reads of a one-trial run: "1 trial in", and no library warning (Optuna
    calls its stale-trial check experimental); a study with other objectives of the same
    count is refused as "another set of objectives"."""
    url = f"sqlite:///{tmp_path}/s.db"
    argv = [sys.executable, "-m", "nas.search", *TINY, "--trials", "1", "--storage", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\n1 trial in " in done.stdout and "Warning" not in done.stderr, done.stderr
    other = subprocess.run(
        [*argv, "--objectives", "accuracy,params"], capture_output=True, text=True, timeout=300
    )
    assert other.returncode == 2
    assert "was created with another set of objectives (['accuracy', 'macs'] there" in (
        other.stderr
    )


def test_a_study_from_before_this_record_format_is_refused_in_one_line(
    tmp_path: Path, real_data_dir, capsys
) -> None:
    """A study written before the record format (nas.study.record: no `record` key, the
    augmentation in its data entry) is refused on resume with one line, nothing written;
    one that records another format says both."""
    url = f"sqlite:///{tmp_path}/s.db"
    assert main([*TINY, "--trials", "1", "--study", "new", "--storage", url]) == 0
    stored = load(url, "new").user_attrs
    old = optuna.create_study(study_name="old", storage=url, directions=["maximize", "minimize"])
    for key, value in stored.items():  # as an older nas wrote it
        if key != "record":
            old.set_user_attr(key, {**value, "augment": "none"} if key == "data" else value)
    capsys.readouterr()
    argv = [*TINY, "--trials", "1", "--storage", url]
    assert main([*argv, "--study", "old"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "nas.search: error: study 'old' has no record format recorded (made by an older nas, "
        "or not by nas.search): its accuracies cannot be checked as comparable; use another "
        "--study\n"
    )
    assert len(load(url, "old").trials) == 0
    from nas.export import main as export
    from nas.refine import main as refine
    from nas.report import main as report

    out = ["--out", str(tmp_path / "x.json")]
    for command, more in ((report, []), (export, out), (refine, [])):  # nothing to read by
        assert command(["--study", "old", "--storage", url, *more]) == 2
        err = capsys.readouterr().err
        assert "study 'old' was not written by this nas.search (record format none" in err
        assert err.count("\n") == 1
    load(url, "new").set_user_attr("record", 1)
    assert main([*argv, "--study", "new"]) == 2
    assert "another record format (1 there, 2 here)" in capsys.readouterr().err
    assert len(load(url, "new").trials) == 1


def test_a_continued_study_takes_its_own_settings_and_refuses_all_differences_at_once(
    tmp_path: Path, real_data_dir, capsys
) -> None:
    """Continued with only --study and --trials, a study keeps its space, objectives, train
    budget, data and cost limits (it was refused once per setting before, and a limit left
    out was dropped); a limit changes only where given, `none` removes it; settings that
    differ are named in one line, all of them."""
    url = f"sqlite:///{tmp_path}/s.db"
    base = ["--study", "s", "--storage", url, "--trials", "1"]
    first = [*TINY, "--objectives", "accuracy,params", "--max-mmacs", "15", "--augment", "none"]
    assert main([*first, *base]) == 0
    before = load(url, "s").user_attrs
    assert main(base) == 0
    study = load(url, "s")
    assert len(study.trials) == 2
    for key in ("space", "objectives", "budget", "data", "limits", "data_record"):
        assert study.user_attrs[key] == before[key], key
    assert main([*base, "--max-params", "100000"]) == 0  # one limit given: the other kept
    assert load(url, "s").user_attrs["limits"] == {"mmacs": 15.0, "params": 100000.0}
    assert main([*base, "--max-mmacs", "none"]) == 0
    assert load(url, "s").user_attrs["limits"] == {"params": 100000.0}
    capsys.readouterr()
    assert (
        main([*base, "--budget", "smoke-long", "--convs", "1:3", "--objectives", "accuracy,macs"])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for said in ("another search space", "another set of objectives", "another train budget"):
        assert said in err, said
    assert "leave those options out to continue with the study's own" in err
    assert len(load(url, "s").trials) == 4
