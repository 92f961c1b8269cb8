"""nas.study.patience: the errors real drivers raise, sorted into outages and refusals; a
real PostgreSQL restarted under a search of two workers, both finishing; an outage longer
than the patience ending in one line; a wrong password refused at once."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from conftest import TINY
from nas.study.patience import transient
from pg_server import pg_bin, start_postgres, stop_postgres, throwaway_postgres

ROOT = Path(__file__).resolve().parents[2]


def _error(url: str, sql: str = "SELECT 1", **connect_args) -> BaseException:  # noqa: ANN003
    """What SQLAlchemy raises for `sql` on `url` (it must raise)."""
    engine = sqlalchemy.create_engine(url, connect_args=connect_args)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    except sqlalchemy.exc.SQLAlchemyError as e:
        return e
    finally:
        engine.dispose()
    raise AssertionError(f"{sql!r} on {url} did not fail")


def test_outages_and_refusals_of_real_drivers(postgres_url, postgres_password, tmp_path) -> None:
    """Each error as the driver raises it: a server not there and a server shutting down
    are waited for; a wrong password, a missing database, a read-only transaction, an SQL
    error are not. SQLite: a lock held past the timeout is waited for, a read-only file
    is not."""
    base = postgres_url.rsplit("/", 1)[0]
    port = int(base.rsplit(":", 1)[1])
    role, password, db = postgres_password
    assert transient(_error("postgresql://nas@127.0.0.1:1/x")), "connection refused"
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as conn:  # a session the administrator terminates
        other = sqlalchemy.create_engine(postgres_url)
        with other.connect() as admin:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        other.dispose()
        with pytest.raises(sqlalchemy.exc.SQLAlchemyError) as e:
            conn.exec_driver_sql("SELECT 1")
    engine.dispose()
    assert transient(e.value), e.value
    refused = [
        _error(f"postgresql://{role}:{password}x@127.0.0.1:{port}/{db}"),
        _error(f"{base}/no_such_database"),
        _error(postgres_url, "SET TRANSACTION READ ONLY; CREATE TABLE t (x int)"),
        _error(postgres_url, "SELECT * FROM no_such_table"),
    ]
    for error in refused:
        assert transient(error) is None, error
    db_file = tmp_path / "locked.db"
    holder = sqlite3.connect(db_file, isolation_level=None)
    holder.execute("CREATE TABLE t (x int)")
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock
    locked = _error(f"sqlite:///{db_file}", "INSERT INTO t VALUES (1)", timeout=0.1)
    assert "locked" in str(locked) and transient(locked), locked
    holder.execute("ROLLBACK")
    holder.close()
    readonly = _error(f"sqlite:///file:{db_file}?mode=ro&uri=true", "INSERT INTO t VALUES (1)")
    assert "readonly" in str(readonly) and transient(readonly) is None, readonly


def _search(url: str, study: str, trials: int, *extra: str) -> subprocess.Popen:
    argv = [*TINY, "--device", "cpu", "--study", study, "--storage", url, "--trials", str(trials)]
    return subprocess.Popen(
        [sys.executable, "-m", "nas.search", *argv, "--heartbeat", "2", *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL server binaries not found")
def test_two_workers_wait_out_a_database_restart_and_finish(tmp_path: Path) -> None:
    """Two nas.search processes (two hosts) on one study; once trials run, the server is
    stopped as for maintenance (pg_ctl stop -m fast: sessions terminated) for 8 s, more
    than the 6 s after which a silent trial counts as stale (heartbeat 2 s). Both say the
    database is unreachable and back, both exit 0, every trial completes once: none
    failed as stale (every worker's heartbeats stopped with the database), none retried,
    nothing left running or waiting. Before nas.study.patience both exited 2 at the stop."""
    with throwaway_postgres() as (_, port):
        url = f"postgresql://nas@127.0.0.1:{port}/postgres"
        workers = [_search(url, "restart", 4, "--seed", str(i)) for i in range(2)]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until a trial has finished
            try:
                study = optuna.load_study(study_name="restart", storage=url)
                if any(t.state.is_finished() for t in study.get_trials(deepcopy=False)):
                    break
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                pass
            time.sleep(0.5)
        stop_postgres(port)
        time.sleep(8)
        start_postgres(port)
        outs = [w.communicate(timeout=300) for w in workers]
        for w, (_, err) in zip(workers, outs):
            assert w.returncode == 0, err
            assert "is unreachable (" in err and "is back after" in err, err
            assert "Traceback" not in err, err
        study = optuna.load_study(study_name="restart", storage=url)
        trials = study.get_trials(deepcopy=False)
        states = [t.state.name for t in trials]
        assert states == ["COMPLETE"] * 8, states
        assert not [t for t in trials if "failed_trial" in t.system_attrs]


@pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL server binaries not found")
def test_an_outage_longer_than_the_patience_is_one_line_and_exit_2() -> None:
    """The server stopped for good mid-search, patience 4 s: the note once, then one
    error line naming how long it waited and the option, exit 2, no traceback."""
    with throwaway_postgres() as (_, port):
        url = f"postgresql://nas@127.0.0.1:{port}/postgres"
        worker = _search(url, "gone", 50, "--storage-patience", "4")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if optuna.load_study(study_name="gone", storage=url).trials:
                    break
            except (KeyError, sqlalchemy.exc.SQLAlchemyError):
                pass
            time.sleep(0.5)
        stop_postgres(port)
        started = time.monotonic()
        _, err = worker.communicate(timeout=120)
        waited = time.monotonic() - started
        start_postgres(port)  # for the fixture's stop
    lines = err.strip().splitlines()
    assert worker.returncode == 2, err
    assert "Traceback" not in err and len(lines) == 2, err
    assert lines[0].startswith(f"note: the database {url} is unreachable ("), lines[0]
    assert lines[1].startswith(f"nas.search: error: storage failed: the database {url} was ")
    assert "(--storage-patience 4): " in lines[1], lines[1]
    assert 4 <= waited < 60, waited  # it waited, and not for the default 300 s


def test_a_wrong_password_is_refused_at_once(postgres_server, postgres_password, capsys):
    """A real refusal is not an outage: the default patience (300 s) is not waited."""
    from nas.search import main

    _, port = postgres_server
    role, password, db = postgres_password
    url = f"postgresql://{role}:{password}x@127.0.0.1:{port}/{db}"
    started = time.monotonic()
    assert main([*TINY, "--trials", "1", "--storage", url]) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "password authentication failed" in err, err


def test_a_result_whose_commit_landed_but_whose_reply_was_lost_is_taken_as_written(
    tmp_path: Path,
) -> None:
    """The first try of a trial's tell commits, then the connection drops before the reply
    (a real OperationalError, raised after the real write to a real SQLite study): the
    second try finds the trial finished. It is the same result, so the tell succeeds once;
    a trial finished with another result (another worker failed it as stale) is still
    refused, as Optuna refuses it."""
    from nas.study.storage import open_storage

    lines: list[str] = []
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", patience=30)
    storage._say = lines.append
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    mine, theirs = study.ask(), study.ask()
    write = optuna.storages.RDBStorage.set_trial_state_values
    dropped = sqlalchemy.exc.OperationalError(
        "COMMIT", {}, Exception("server closed the connection unexpectedly")
    )
    tries = []

    def lost_reply(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        tries.append(args)
        result = write(self, *args, **kwargs)
        if len(tries) == 1:
            raise dropped
        return result

    state = optuna.trial.TrialState.COMPLETE
    assert storage._patiently(
        "set_trial_state_values", lost_reply, (mine._trial_id, state, [0.5, 3.0]), {}
    )
    assert len(tries) == 2 and storage.get_trial(mine._trial_id).values == [0.5, 3.0]
    assert len(lines) == 2 and "is back after" in lines[1], lines

    def failed_meanwhile(self, trial_id, *rest):  # noqa: ANN001, ANN002, ANN202
        tries.append(trial_id)
        if len(tries) == 1:  # the connection drops; meanwhile another worker fails it
            write(self, trial_id, optuna.trial.TrialState.FAIL)
            raise dropped
        return write(self, trial_id, *rest)

    tries.clear()
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage._patiently(
            "set_trial_state_values", failed_meanwhile, (theirs._trial_id, state, [0.5, 3.0]), {}
        )
    assert len(tries) == 2 and storage.get_trial(theirs._trial_id).state.name == "FAIL"
