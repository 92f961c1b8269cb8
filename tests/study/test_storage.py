"""nas.study.storage: several nas.search processes sharing one study on a real PostgreSQL
server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import TINY
from nas.search import main
from nas.study.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]


def start(args: list[str]) -> subprocess.Popen:
    """A nas.search process as another machine would run it; one thread each, so that
    several share this machine's two cores without OpenMP spinning against each other."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nas.search", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_four_processes_share_one_postgres_study(postgres_url: str, real_data_dir) -> None:
    """As on four machines: the same command, 3 trials each, one study."""
    procs = [
        start([*TINY, "--trials", "3", "--study", "pg", "--storage", postgres_url])
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    failed = [out.strip().splitlines()[-3:] for p, out in zip(procs, outs) if p.returncode]
    assert not failed, failed  # the last lines of each failure: the error itself
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert len(study.trials) == 12
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert sorted(t.number for t in study.trials) == list(range(12))
    assert study.user_attrs["budget"]["name"] == "smoke"
    for out in outs:
        assert "3 trials in" in out and "Traceback" not in out and "rror" not in out


def test_reference_enqueued_once_by_concurrent_starters(postgres_url: str, real_data_dir) -> None:
    # A d2l space holding only the chapter's network: every trial is that network.
    only_ref = [
        "--growth-rate",
        "32:32",
        "--convs",
        "4:4",
        "--compression",
        "0.5:0.5:0.125",
        "--budget",
        "smoke",
        "--trials",
        "1",
        "--study",
        "ref",
        "--storage",
        postgres_url,
    ]
    procs = [start(only_ref) for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 3, outs
    study = optuna.load_study(study_name="ref", storage=postgres_url)
    assert len(study.trials) == 3
    assert sum(t.user_attrs.get("reference") == "d2l chapter" for t in study.trials) == 1


def test_other_budget_refused_on_postgres(postgres_url: str, real_data_dir, capsys) -> None:
    assert main([*TINY, "--trials", "1", "--study", "b", "--storage", postgres_url]) == 0
    assert (
        main([*TINY, "--trials", "1", "--study", "b", "--storage", postgres_url, "--lr", "0.5"])
        == 2
    )
    assert "lr 0.1 there, 0.5 here" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="b", storage=postgres_url).trials) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://nas@127.0.0.1:1/nas", "cannot open storage"),
        ("postgresql+pg8000://nas@127.0.0.1/nas", "database driver 'pg8000' is not installed"),
        ("nosuchdb://x/y", "unknown database kind 'nosuchdb'"),
        ("postgresql://", "cannot open storage"),
        ("mysql://x@127.0.0.1:1/db", "cannot open storage"),
        ("sqlite:////proc/forbidden/x.db", "cannot create /proc/forbidden"),
    ],
)
def test_unreachable_storage_is_one_line(url: str, message: str, capsys) -> None:
    """Refused at once: no waiting for a server that is not there (tests/study/
    test_patience.py has the waiting)."""
    assert main([*TINY, "--trials", "1", "--storage", url, "--storage-patience", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.search: error: ") and message in err and err.count("\n") == 1


def test_heartbeat_storage_fails_and_retries_stale_trials(tmp_path: Path) -> None:
    """Optuna's own mechanism, as configured here: stale after 3 heartbeats, retried once."""
    import time

    storage = open_storage(f"sqlite:///{tmp_path}/h.db", heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="h")
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() outside optimize(): on purpose
        dead = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    storage.record_heartbeat(dead._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # not before the grace
    deadline = time.monotonic() + 30  # stale once 3 s have passed (whole seconds in SQLite)
    while study.trials[0].state == optuna.trial.TrialState.RUNNING:
        assert time.monotonic() < deadline, "the silent trial never went stale"
        time.sleep(0.2)
        optuna.storages.fail_stale_trials(study)
    trials = study.trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[1].state == optuna.trial.TrialState.WAITING
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == 0


POP = """
import json, sys, optuna
from nas.study.storage import open_storage
study = optuna.load_study(study_name="q", storage=open_storage(sys.argv[1]))
popped = []
while (trial_id := study._pop_waiting_trial_id()) is not None:
    popped.append(trial_id)
print(json.dumps(popped))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_each_queued_trial_is_popped_once(backend: str, request, tmp_path: Path) -> None:
    """Four processes pop 200 enqueued trials at once (as workers pop the d2l reference
    or a heartbeat retry): each trial is taken exactly once. On SQLite, before
    BEGIN IMMEDIATE, 4 processes popped 300 queued trials 327 times."""
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else (f"sqlite:///{tmp_path}/q.db")
    )
    study = optuna.create_study(study_name="q", storage=open_storage(url))
    for i in range(200):
        study.enqueue_trial({"x": i}, skip_if_exists=False)
    script = tmp_path / "pop.py"
    script.write_text(POP)
    procs = [
        subprocess.Popen([sys.executable, str(script), url], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    popped = [i for p in procs for i in json.loads(p.communicate(timeout=120)[0])]
    assert sorted(popped) == sorted(t._trial_id for t in study.trials)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_default_preset_with_two_workers_runs_the_reference_once(
    backend: str, request, tmp_path: Path, real_data_dir
) -> None:
    """The d2l preset enqueues the chapter's network; two workers must not both run it."""
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else (f"sqlite:///{tmp_path}/w.db")
    )
    argv = ["--growth-rate", "8:32:8", "--convs", "1:4", "--budget", "smoke", "--trials", "2"]
    assert main([*argv, "--workers", "2", "--study", "w", "--storage", url]) == 0
    trials = optuna.load_study(study_name="w", storage=url).trials
    assert len(trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sum(t.user_attrs.get("reference") == "d2l chapter" for t in trials) == 1


def test_readme_recipe_on_postgres_as_written(postgres_url: str, real_data_dir) -> None:
    """The README's multi-machine recipe with its plain postgresql:// URL: two hosts'
    nas.search, then the optuna-dashboard command, which lists the study."""
    import time
    import urllib.request

    from conftest import free_port

    procs = [start([*TINY, "--study", "big", "--trials", "2", "--storage", postgres_url])]
    procs.append(start([*TINY, "--study", "big", "--trials", "2", "--storage", postgres_url]))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    port = free_port()
    dash = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), postgres_url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(150):
            try:
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=1
                ).read()
                break
            except OSError:
                assert dash.poll() is None, dash.stdout.read()
                time.sleep(0.2)
        else:
            raise AssertionError("optuna-dashboard did not answer")
    finally:
        dash.terminate()
        dash.wait(timeout=10)
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["big"]
    assert len(optuna.load_study(study_name="big", storage=postgres_url).trials) == 4


def test_connection_use_is_estimated_against_the_server(postgres_url: str, monkeypatch):
    """nas.search says when a run may hold more connections than the server has free (a
    default PostgreSQL refused clients from about 40 pooled workers: benchmarks/README.md);
    NAS_DB_POOL=null opens one per operation instead of SQLAlchemy's pool."""
    import sqlalchemy.pool

    from nas.study.storage import connection_note

    storage = open_storage(postgres_url)
    assert isinstance(storage.engine.pool, sqlalchemy.pool.QueuePool)
    assert connection_note(storage, 2, 1) is None  # 6 of the test server's 200
    note = connection_note(storage, 100, 1)
    assert note.startswith(
        "this run may open 300 database connections at once (100 processes x 3)"
    )
    assert "max_connections 200" in note and "PgBouncer" in note
    monkeypatch.setenv("NAS_DB_POOL", "null")
    assert isinstance(open_storage(postgres_url).engine.pool, sqlalchemy.pool.NullPool)


def test_the_storage_opens_without_torch() -> None:
    """A process that only talks to the study (a dashboard, benchmarks/storage_load.py's
    clients, 150 of them at once) imports nas.study.storage without torch: ~55 MB resident
    instead of ~235 MB. (nas.training.budget reading AUGMENTS from nas.data.dataset pulled
    torch in.)"""
    code = "import sys, nas.study.storage; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out
