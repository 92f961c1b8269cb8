"""nas.search through PgBouncer in transaction mode (docs/pgbouncer.ini, Debian's
pgbouncer) in front of a real PostgreSQL, with the URL form the docs show."""

from __future__ import annotations

import optuna
import psycopg
import pytest
from test_storage import start

from conftest import TINY
from nas.errors import UsageError
from nas.study.storage import open_storage
from pg_server import pgbouncer_bin, throwaway_pgbouncer


def test_two_hosts_search_through_pgbouncer(pgbouncer_url: str, postgres_url: str) -> None:
    """The docs' recipe, two hosts' nas.search through PgBouncer, heartbeats on: every
    trial completes, none stays RUNNING, and every trial's heartbeat was stored."""
    argv = [*TINY, "--study", "big", "--trials", "4", "--heartbeat", "1"]
    procs = [start([*argv, "--storage", pgbouncer_url]) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [out[-2000:] for out in outs]
    for out in outs:
        assert "4 trials in" in out and "Traceback" not in out
        assert "database connections" not in out  # the pooler is seen: no note
    trials = optuna.load_study(study_name="big", storage=postgres_url).trials
    assert len(trials) == 8
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    with psycopg.connect(postgres_url) as conn:
        beats = conn.execute("SELECT count(DISTINCT trial_id) FROM trial_heartbeats").fetchone()
    assert beats[0] == 8


def test_pgbouncer_scram_login_as_shipped(postgres_server, postgres_password) -> None:
    """docs/pgbouncer.ini's own authentication: userlist.txt holds the role's SCRAM secret
    from pg_authid (as docs/many-machines.md writes it), the worker gives its password,
    and PgBouncer logs in to a server that requires SCRAM with the same secret."""
    if pgbouncer_bin() is None:
        pytest.skip("pgbouncer not installed (apt-get install pgbouncer; .ci/setup --test does)")
    _, server_port = postgres_server
    role, password, database = postgres_password
    with psycopg.connect(host="127.0.0.1", port=server_port, user="nas", dbname="postgres") as c:
        secret = c.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])
        secret = secret.fetchone()[0]
    assert secret.startswith("SCRAM-SHA-256$")
    with throwaway_pgbouncer(server_port, scram=(role, secret)) as port:
        url = f"postgresql://{role}:{password}@127.0.0.1:{port}/{database}"
        study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat=1))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=12)
        assert len(study.trials) == 12
        wrong = f"postgresql://{role}:not-it@127.0.0.1:{port}/{database}"
        with pytest.raises(UsageError, match="SASL authentication failed"):
            open_storage(wrong)
