"""Where studies live: Optuna storage URLs, and creating or loading a study safely.

Default: one SQLite file per study, `sqlite:///studies/<study>.db`. Any Optuna storage
URL works, PostgreSQL included (`postgresql://user@host/db`), for searches spread over
several machines. A study remembers everything that makes its accuracies comparable
(search space, objectives, precision, data and validation split, train budget; its cost
limits may change); a run that asks for anything else is refused before anything is
written.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
import sqlalchemy.pool
from sqlalchemy.engine import make_url

from nas.errors import UsageError, exception_chain, first_line
from nas.study.metrics import DEFAULT_OBJECTIVES, Limits, directions, metric_names
from nas.study.patience import PatientStorage, StorageOutage
from nas.study.record import (
    EXPERIMENT_KEYS,
    RECORD_VERSION,
    StudyRecord,
    stored_experiment,
    write_study,
)
from nas.study.urls import public_url

__all__ = [
    "METRIC_NAMES",
    "connection_note",
    "default_storage_url",
    "difference",
    "finished_elsewhere",
    "load_study",
    "open_or_create_study",
    "open_storage",
    "storage_failure",
    "update_limits",
]

METRIC_NAMES = metric_names(DEFAULT_OBJECTIVES)  # ["val_accuracy", "MMACs (fvcore)"]
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SQLITE_TIMEOUT_S = 60
POOL_ENV = "NAS_DB_POOL"  # "null": a connection per operation; else SQLAlchemy's pool
# How to install a missing driver; plain postgresql:// uses psycopg 3, installed with nas.
DRIVER_HINTS = {
    "psycopg": "pip install 'psycopg[binary]'",
    "psycopg2": "pip install psycopg2-binary, or use plain postgresql://, which nas supports",
    "mysqldb": "pip install mysqlclient",
    "pymysql": "pip install pymysql",
}  # writers wait this long for SQLite's lock instead of failing


def check_study_name(name: str) -> str:
    if not STUDY_NAME.match(name):
        raise UsageError(
            f"study name {name!r} must be 1-100 letters, digits, '_', '.' or '-' "
            "(it names a file under studies/)"
        )
    return name


def default_storage_url(study: str) -> str:
    """sqlite:///studies/STUDY.db; for a study nas.refine linked to S (S-refined-BUDGET),
    S's file when the study has none of its own: the linked study lives beside S."""
    name = check_study_name(study)
    source = name.rpartition("-refined-")[0]
    if (
        source
        and not Path(f"studies/{name}.db").exists()
        and Path(f"studies/{source}.db").exists()
    ):
        name = source
    return f"sqlite:///studies/{name}.db"


def open_storage(
    url: str,
    must_exist: bool = False,
    heartbeat: int | None = None,
    patience: float = 0.0,
    say: Callable[[str], None] | None = None,
) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage for `url`; one-line UsageError if it is malformed or unreachable.

    heartbeat: seconds between a running trial's heartbeats. A trial whose worker died
    (no heartbeat for 3 intervals) is failed by the next worker that starts a trial, and
    its parameters are queued again, once.
    patience: seconds a database outage is waited out, at opening and at every call after
    (nas.study.patience); 0: the first error is final. say: where the outage's two lines
    go (default stderr).
    """
    shown = public_url(url)  # every line below names the URL without its password
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise UsageError(f"malformed storage URL {shown!r}: {e}") from None
    try:
        parsed.get_dialect().import_dbapi()  # the driver: a missing one is named here
    except sqlalchemy.exc.NoSuchModuleError:
        raise UsageError(
            f"cannot open storage {shown}: unknown database kind {parsed.drivername!r}"
        ) from None
    except ImportError as e:
        hint = DRIVER_HINTS.get(parsed.get_driver_name(), f"pip install {e.name or 'it'}")
        raise UsageError(
            f"cannot open storage {shown}: its database driver "
            f"{parsed.get_driver_name()!r} is not installed ({hint})"
        ) from None
    engine = _server_engine_kwargs(parsed)
    kwargs: dict[str, Any] = {"engine_kwargs": engine} if engine else {}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and parsed.query.get("uri") == "true" and db.startswith("file:"):
            db = db.removeprefix("file:")  # sqlite:///file:PATH?mode=ro&uri=true
        if db and db != ":memory:":
            path = Path(db)
            if must_exist and not path.exists():
                raise UsageError(f"no study database at {path} (storage {shown})")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"cannot create {path.parent}: {e.strerror or e}") from None
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat is not None:
                kwargs["heartbeat_interval"] = heartbeat
                kwargs["grace_period"] = 3 * heartbeat
                kwargs["heartbeat_stale_trial_callback"] = (
                    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                )
            for attempt in range(5):
                try:
                    storage = PatientStorage(
                        url, patience=patience, shown=shown, say=say, **kwargs
                    )
                    if parsed.get_backend_name() == "sqlite":
                        _immediate_transactions(storage.engine)
                    return storage
                except (sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.IntegrityError):
                    # Several workers creating the tables of a new database at once: one
                    # wins, the others find the tables there on the next try.
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        reason = first_line(e, limit=10_000)
        raise UsageError(f"cannot open storage {shown}: {reason}") from None


def connection_note(
    storage: optuna.storages.BaseStorage, processes: int, threads: int
) -> str | None:
    """A line when this run may hold more connections at once than the PostgreSQL server
    has free: a process holds about one per thread that talks to the database (its trial
    threads, the main and the heartbeat thread; benchmarks/storage_load.py measured 2.1
    per one-trial process). None for another database, a server that does not say, or one
    behind a pooler such as PgBouncer (the server listens on another port than the URL's:
    the pooler's pool size, not the workers, bounds the server's connections)."""
    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return None
    per_process = threads + 2  # measured: 2.1 per process with one trial each
    try:
        with engine.connect() as conn:
            port = conn.exec_driver_sql("SELECT inet_server_port()").scalar()
            if port is not None and port != (engine.url.port or 5432):
                return None
            limit = int(conn.exec_driver_sql("SHOW max_connections").scalar())
            reserved = int(conn.exec_driver_sql("SHOW superuser_reserved_connections").scalar())
            used = int(conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity").scalar())
    except sqlalchemy.exc.SQLAlchemyError:
        return None
    free, wanted = limit - reserved - used, processes * per_process
    if wanted <= free:
        return None
    return (
        f"this run may open {wanted} database connections at once ({processes} process"
        f"{'es' if processes > 1 else ''} x {per_process}) and the server has {free} free "
        f"(max_connections {limit}): other hosts' workers count too; raise max_connections "
        "or put PgBouncer in front (docs/many-machines.md)"
    )


def _server_engine_kwargs(parsed: sqlalchemy.engine.URL) -> dict[str, Any]:
    """SQLAlchemy engine settings for a database server (none for SQLite)."""
    engine: dict[str, Any] = {}
    if parsed.get_backend_name() != "sqlite" and os.environ.get(POOL_ENV) == "null":
        # A connection per operation, closed after it, instead of SQLAlchemy's pool: fewer
        # held, but slower, and measured no better (benchmarks/README.md, "Many workers").
        engine["poolclass"] = sqlalchemy.pool.NullPool
    if parsed.get_backend_name() != "sqlite":
        # A pooled connection the server dropped while it sat idle (a restart, an idle
        # timeout, optuna#5600) is found by a ping at checkout and replaced, not handed out
        engine["pool_pre_ping"] = True
    if parsed.get_driver_name() == "psycopg":
        # No server-side prepared statements (psycopg 3 prepares a query on its 6th run on a
        # connection): a pooler in transaction mode (PgBouncer before 1.21) hands each
        # transaction another server connection, where the statement does not exist.
        # psycopg2 never prepared; Optuna's queries are small. A connection attempt to a
        # host that does not answer gives up after 10 s (and is tried again: patience).
        engine["connect_args"] = {"prepare_threshold": None, "connect_timeout": 10}
    return engine


def _immediate_transactions(engine: sqlalchemy.engine.Engine) -> None:
    """Every SQLite transaction takes the write lock when it begins (BEGIN IMMEDIATE).

    Optuna pops an enqueued (WAITING) trial by reading its state and then writing RUNNING,
    trusting SELECT ... FOR UPDATE to hold the row in between; SQLite ignores that, and
    its default transactions start at the first write, so two processes could both read
    WAITING and both run the trial (measured: 327 pops of 300 queued trials by 4
    processes). With the lock taken at BEGIN, the second reads RUNNING and moves on.
    SQLAlchemy's recipe for pysqlite: the driver's own implicit BEGIN is switched off.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sqlalchemy.engine.Connection) -> None:
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except sqlalchemy.exc.OperationalError as e:
            if "readonly" not in str(e):
                raise
            connection.exec_driver_sql("BEGIN")  # a read-only file: reading is all there is

    engine.dispose()  # connections made before the listeners are dropped


def load_study(
    storage: optuna.storages.BaseStorage, name: str, searched: bool = False
) -> optuna.Study:
    """An existing study; a UsageError naming the studies that do exist otherwise.
    searched: refuse one that nas.search did not write in this record format (nothing to
    read its trials by)."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        have = ", ".join(names) if names else "none"
        raise UsageError(
            f"no study named {name!r} in this storage (studies there: {have})"
        ) from None
    record = StudyRecord.of(study).record
    if searched and record != RECORD_VERSION:
        raise UsageError(
            f"study {name!r} was not written by this nas.search (record format "
            f"{record or 'none'}, this nas reads {RECORD_VERSION}): run the search again "
            "into another --study"
        )
    return study


# Cost limits change no trial's training, only which trials are feasible: a study takes
# new ones (update_limits); the other keys are frozen.
LIMIT_KEYS = ("limits",)


def update_limits(study: optuna.Study, limits: Limits) -> str | None:
    """Give the study these cost limits if it has others, and record the change in its
    `limits_history` (a list of {at, limits}). Every stored trial's feasibility follows
    from its stored costs and the limits of the moment (nas.results.front.over_limits);
    networks never trained because of an old limit are trained when next sampled.
    Returns a line saying what changed, or None."""
    stored = StudyRecord.of(study)
    old, new = Limits.from_dict(stored.limits), limits.to_dict()
    if stored.limits == new:
        return None
    history = [*stored.limits_history, _limits_entry(new)]
    write_study(study, limits=new, limits_history=history)
    return (
        f"budgets changed from {old.describe()} to {limits.describe()}; every stored trial "
        "is judged by the new ones, from its stored costs"
    )


def _limits_entry(limits: dict[str, Any]) -> dict[str, Any]:
    return {"at": datetime.now(UTC).isoformat(timespec="seconds"), "limits": limits}


def open_or_create_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    experiment: dict[str, Any],
) -> tuple[optuna.Study, bool]:
    """Continue study `name`, or create it with our objectives and `experiment`.

    `experiment` has one entry per EXPERIMENT_KEYS key (nas.study.record): everything
    that makes the study's accuracies comparable (record format, search space,
    objectives, cost limits, precision, data fingerprint, train budget). Returns (study,
    created). Creation is atomic in the database (a unique study name), so of several
    workers starting at once exactly one creates the study.
    Refuses (UsageError, nothing written) a study with other objectives or any other
    entry, but for the cost limits (LIMIT_KEYS), which update_limits changes.
    """
    assert list(experiment) == list(EXPERIMENT_KEYS)
    objectives = tuple(experiment["objectives"])
    wanted = directions(objectives)
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=wanted
        )
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    else:
        with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(objectives))
        write_study(study, limits_history=[_limits_entry(experiment["limits"])])
        for key, value in experiment.items():  # "budget" last: the record is complete
            write_study(study, **{key: value})
        return study, True
    have = [d.name.lower() for d in study.directions]
    stored = stored_experiment(study)
    if len(have) != len(wanted) or (have != wanted and "objectives" not in stored):
        there = ",".join(stored.get("objectives") or [f"{len(have)} objectives: {have}"])
        raise UsageError(
            f"study {name!r} optimises {there}, not {','.join(objectives)} (use another "
            "--study, or the same --objectives)"
        )
    for _ in range(100):  # another worker may have created it a moment ago
        if "budget" in stored:
            break
        time.sleep(0.1)
        stored = stored_experiment(study)
    # the record's format first (an older one would not compare key by key), then the
    # data: other images also change the space (channels, classes, statistics)
    first = {"record": 0, "data": 1}
    differ = []
    for key, label in sorted(EXPERIMENT_KEYS.items(), key=lambda kv: first.get(kv[0], 2)):
        if key in LIMIT_KEYS:  # limits may change: update_limits
            continue
        if key not in stored:
            raise UsageError(
                f"study {name!r} has no {label} recorded (made by an older nas, or not by "
                "nas.search): its accuracies cannot be checked as comparable; use another --study"
            )
        if stored[key] != experiment[key]:
            if key == "record":  # another format: the rest would not compare key by key
                raise UsageError(
                    f"study {name!r} was created with another {label} "
                    f"({difference(stored[key], experiment[key])}); accuracies would not be "
                    "comparable (use another --study)"
                )
            differ.append(f"another {label} ({difference(stored[key], experiment[key])})")
    if differ:  # every difference at once, not one per try
        raise UsageError(
            f"study {name!r} was created with " + "; and ".join(differ) + ": accuracies would "
            "not be comparable (leave those options out to continue with the study's own, or "
            "use another --study)"
        )
    return study, False


def difference(stored: Any, ours: Any) -> str:
    """'name 'smoke' there, 'short' here, ...' for dicts, else 'X there, Y here'."""
    if isinstance(stored, dict) and isinstance(ours, dict):
        keys = [*ours, *(k for k in stored if k not in ours)]
        return ", ".join(
            f"{k} {stored.get(k)!r} there, {ours.get(k)!r} here"
            for k in keys
            if stored.get(k) != ours.get(k)
        )
    return f"{stored!r} there, {ours!r} here"


def storage_failure(e: BaseException) -> str | None:
    """One line for a database that cannot be written or read (read-only file, lock held
    too long, full disk, lost server), from the driver's own message; None otherwise."""
    for link in exception_chain(e):
        if isinstance(link, StorageOutage):  # waited out for as long as asked, in vain
            return first_line(link, limit=10_000)
    for link in exception_chain(e):
        if isinstance(link, sqlalchemy.exc.OperationalError) and link.orig is not None:
            return first_line(link.orig, limit=10_000)
    if isinstance(e, (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)):
        return first_line(e, limit=10_000)
    return None


def finished_elsewhere(e: BaseException) -> BaseException | None:
    """The refusal in `e`'s chain of a tell for a trial another worker already finished
    (failed as stale while this one was unreachable or paused), or None."""
    for link in exception_chain(e):
        if isinstance(link, optuna.exceptions.UpdateFinishedTrialError):
            return link
        if isinstance(link, ValueError) and str(link).startswith("Cannot tell a"):
            return link
    return None
