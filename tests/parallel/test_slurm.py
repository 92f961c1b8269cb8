"""nas.parallel.slurm: `nas.search --slurm-array N` through submitit's LocalExecutor (the same
submission and task path as on SLURM, run as processes here), on a real PostgreSQL."""

from __future__ import annotations

import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import TINY
from nas.cli import slurm_minutes
from nas.parallel.slurm import shares
from nas.search import main

ROOT = Path(__file__).resolve().parents[2]
# As the README's recipe writes it, on a CPU
SLURM = ["--slurm-gpus", "1", "--slurm-time", "2:00:00"]


def submit(args: list[str], cwd: Path) -> tuple[str, list[str]]:
    """Run `python -m nas.search ... --slurm-array N` as a user would, with submitit's
    LocalExecutor; returns its output and the local job ids (the jobs' controller pids).
    Output goes to a file: the local jobs inherit it, and a pipe would stay open until
    they end."""
    env = {**os.environ, "NAS_SLURM_EXECUTOR": "local", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT)
    log = cwd / "submit.log"
    with open(log, "w") as f:
        code = subprocess.run(
            [sys.executable, "-m", "nas.search", *args],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=120,
        ).returncode
    out = log.read_text()
    assert code == 0, out
    ids = re.findall(r"'(\d+)'", out.split("local jobs: ", 1)[1].splitlines()[0])
    return out, ids


def settled(url: str, study: str, want, timeout: float) -> list[optuna.trial.FrozenTrial]:  # noqa: ANN001
    """The study's trials once want(trials) holds (polled), or an AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            trials = optuna.load_study(study_name=study, storage=url).trials
        except KeyError:  # not created yet
            trials = []
        if want(trials):
            return trials
        assert time.monotonic() < deadline, [(t.number, t.state.name) for t in trials]
        time.sleep(0.5)


def test_slurm_array_runs_exactly_trials(
    pgbouncer_url: str, postgres_url: str, real_data_dir, tmp_path: Path
) -> None:
    """The README's recipe: 3 workers as one array through PgBouncer, 7 trials in all
    (3 + 2 + 2): exactly 7, all complete, none RUNNING; every task ended well; the output
    names the job and how to follow it."""
    out, ids = submit(
        [*TINY, "--study", "big", "--trials", "7", "--storage", pgbouncer_url,
         "--slurm-array", "3", *SLURM],
        tmp_path,
    )  # fmt: skip
    assert len(ids) == 3 and "3 workers of study 'big', 7 trials in all (3 or 2 each)" in out
    assert f"optuna-dashboard {pgbouncer_url}" in out and "python -m nas.report --study big" in out
    folder = tmp_path / "slurm" / "big"
    results = [folder / f"{i}_0_result.pkl" for i in ids]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in results):
        assert time.monotonic() < deadline, sorted(p.name for p in folder.iterdir())
        time.sleep(0.5)
    assert [pickle.loads(r.read_bytes()) for r in results] == [("success", 0)] * 3
    trials = optuna.load_study(study_name="big", storage=postgres_url).trials
    assert len(trials) == 7
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    logs = "".join((folder / f"{i}_0_log.out").read_text() for i in ids)
    assert logs.count("trials in") == 3 and "Traceback" not in logs
    assert oct(folder.stat().st_mode & 0o777) == "0o700"  # it holds the storage URL


def test_sigterm_fails_the_running_trial(postgres_url: str, real_data_dir, tmp_path: Path) -> None:
    """SLURM's time limit sends SIGTERM (the local controller forwards it, as srun does):
    submitit alone would log and ignore it; the task fails its running trial as
    interrupted and stops, nothing left RUNNING."""
    _, (job,) = submit(  # trials of a few seconds: the signal lands inside one
        [*TINY, "--budget", "smoke-long", "--study", "t", "--trials", "40",
         "--storage", postgres_url, "--slurm-array", "1", *SLURM],
        tmp_path,
    )  # fmt: skip
    pid, log = int(job), tmp_path / "slurm" / "t" / f"{job}_0_log.err"
    try:
        running = optuna.trial.TrialState.RUNNING
        settled(postgres_url, "t", lambda ts: any(t.state == running for t in ts), 120)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60  # the task's last word, once the trial is failed
        while "nas.search: interrupted (SIGTERM)" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        try:
            os.kill(pid, signal.SIGINT)  # the controller stops its tasks, if still there
        except ProcessLookupError:
            pass
    trials = optuna.load_study(study_name="t", storage=postgres_url).trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["fail_reason"] == "interrupted (SIGTERM)"
    assert not any(t.state == running for t in trials) and len(trials) < 40


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--slurm-array needs a database server, not a SQLite file"),
        (["--storage", "sqlite:///x.db"], "a file database on a shared filesystem is not safe"),
        (["--slurm-time", "2h"], "expected a SLURM time such as 2:00:00"),
        (
            ["--slurm-array", "9", "--storage", "postgresql://nas@127.0.0.1:1/x"],
            "--slurm-array 9 is more workers than --trials 4",
        ),
    ],
)
def test_slurm_refusals_are_one_line(
    extra: list[str], message: str, tmp_path, monkeypatch, capsys
) -> None:
    """Refused before anything is written or submitted: one line, exit status 2."""
    monkeypatch.chdir(tmp_path)
    argv = [*TINY, "--trials", "4", "--slurm-array", "2", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.search: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_slurm_options_need_the_array(capsys) -> None:
    assert main([*TINY, "--slurm-gpus", "2"]) == 2
    assert "--slurm-gpus goes with --slurm-array N" in capsys.readouterr().err


def test_without_sbatch_the_submission_says_where_to_run(
    postgres_url: str, monkeypatch, tmp_path, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    monkeypatch.delenv("NAS_SLURM_EXECUTOR", raising=False)
    assert main([*TINY, "--trials", "2", "--storage", postgres_url, "--slurm-array", "2"]) == 2
    assert "sbatch and srun, which are not on this machine's PATH" in capsys.readouterr().err


def test_slurm_time_and_shares() -> None:
    assert [slurm_minutes(t) for t in ("2:00:00", "90", "90:30", "1-12", "1-0:30")] == [
        120, 90, 91, 2160, 1470
    ]  # fmt: skip
    assert shares(7, 3) == [3, 2, 2] and shares(6, 6) == [1] * 6


def test_the_sbatch_script_asks_for_the_array(postgres_url: str, monkeypatch, tmp_path, capsys):
    """On SLURM (an sbatch here that takes the script and answers as sbatch does): one
    array of 3 tasks, the GPUs, the time and the partition asked; the job id and the
    commands to follow it printed; a refusal is one line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        '#!/bin/sh\ncp "$1" "$(dirname "$1")/seen.sh"\necho "Submitted batch job 4242"\n'
    )
    sbatch.chmod(0o755)
    (bin_dir / "srun").symlink_to("/bin/true")  # submitit looks for it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("NAS_SLURM_EXECUTOR", raising=False)
    argv = [*TINY, "--trials", "7", "--study", "big", "--storage", postgres_url]
    assert main([*argv, "--slurm-array", "3", *SLURM, "--slurm-partition", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "submitted job 4242: 3 workers of study 'big'" in out and "squeue -j 4242" in out
    script = (tmp_path / "slurm" / "big" / "seen.sh").read_text()
    for line in ("--array=0-2%3", "--gpus-per-node=1", "--time=120", "--partition=gpu"):
        assert f"#SBATCH {line}" in script, script
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n"
    )
    assert main([*argv, "--slurm-array", "3", "--slurm-partition", "nope"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("nas.search: error: sbatch refused the job array: ")
        and err.count("\n") == 1
    )
    assert "invalid partition specified: nope" in err
