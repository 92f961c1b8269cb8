"""Waiting out a database's bad minute: transient storage errors are retried, not fatal.

A cluster's database has bad minutes: a restart for maintenance or failover, a pooler
that queues (PgBouncer's query_wait_timeout), a connection dropped while idle, a network
blip. `PatientStorage` is Optuna's RDBStorage whose every database call, on an error that
`transient` classifies as such, is tried again with capped exponential backoff and
jitter, for up to `patience` seconds from the start of the outage; the process says once
that the database is unreachable and once that it is back. Past the patience, or on a
real refusal (bad URL, wrong password, read-only or full database, a schema of another
version), the error is raised as before (one line, exit 2: nas.cli).

What an outage does to a running search (docs/many-machines.md):
- a trial in flight keeps training; its writes (attributes, the result) wait;
- its heartbeats wait too, so for `grace` seconds after the database is back this
  process judges no other trial stale: the other workers' heartbeats were as stopped as
  its own, and are written again within one heartbeat interval;
- a result written twice because the first write committed but its reply was lost is
  taken as written; a result for a trial the heartbeat failed meanwhile (another worker
  judged it stale) is refused by Optuna and dropped by the worker (its retry runs).
A call whose commit was lost with its reply can still leave one extra row behind (a new
trial created twice): the database cannot tell a retried write from a new one.
"""

from __future__ import annotations

import functools
import inspect
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import sqlalchemy.exc

from nas.errors import exception_chain, first_line

__all__ = ["DEFAULT_PATIENCE_S", "PatientStorage", "StorageOutage", "transient"]

DEFAULT_PATIENCE_S = 300.0  # --storage-patience: a restart or failover, with room
FIRST_WAIT_S = 0.5  # backoff: 0.5, 1, 2, 4, 8, then 10 s between tries, each 50-100 %
MAX_WAIT_S = 10.0

# SQLSTATEs of a server that is going away, coming back, full or busy: connection
# exceptions (class 08), admin/crash shutdown, cannot connect now, too many connections,
# serialization failure and deadlock (the transaction may simply run again)
TRANSIENT_STATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01"}
# ... and of a real refusal: bad password or role, no such database, no privilege, syntax
# or schema errors, a read-only transaction
REFUSED_CLASSES = ("28", "3D", "42", "25")
# Driver and pooler messages without a SQLSTATE (a connection that never opened, or
# PgBouncer's own errors), lower-cased; refusals are checked first.
REFUSED_WORDS = (
    "password authentication failed",
    "no password supplied",
    "role ",
    "does not exist",
    "permission denied",
    "readonly database",
    "read-only",
    "disk is full",
    "could not translate host name",
    "name or service not known",
)
TRANSIENT_WORDS = (
    "connection refused",
    "server closed the connection",
    "terminating connection",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "connection reset",
    "connection timed out",
    "timeout expired",
    "could not receive data",
    "could not send data",
    "ssl syscall error",
    "eof detected",
    "the connection is closed",
    "the connection is lost",
    "consuming input failed",
    "query_wait_timeout",
    "server_login_retry",
    "pgbouncer cannot connect",
    "no more connections allowed",
    "too many clients",
    "database is locked",
    "broken pipe",
    "no route to host",
    "network is unreachable",
    "server conn crashed",
)


class StorageOutage(optuna.exceptions.StorageInternalError):
    """The database stayed unreachable for longer than the patience."""


def transient(e: BaseException) -> str | None:
    """The driver's one line if `e` is a storage error worth waiting out (the database
    going away, coming back, busy or locked), else None (a real refusal, or not a storage
    error at all)."""
    for link in exception_chain(e):
        if not isinstance(link, sqlalchemy.exc.SQLAlchemyError):
            continue
        orig = getattr(link, "orig", None)
        line = first_line(orig if orig is not None else link, limit=10_000)
        state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if state:
            if state.startswith(REFUSED_CLASSES):
                return None
            if state.startswith("08") or state in TRANSIENT_STATES:
                return line
        words = line.lower()
        if any(w in words for w in REFUSED_WORDS):
            return None
        if getattr(link, "connection_invalidated", False):  # SQLAlchemy saw a disconnect
            return line
        if any(w in words for w in TRANSIENT_WORDS):
            return line
    return None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# Optuna's RDBStorage methods that talk to the database (those _CachedStorage and Study
# call); the rest (heartbeat settings, pickling) do not.
DATABASE_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "_create_new_trial",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
)  # and the heartbeat's two, below

_inside = threading.local()  # a database call in progress on this thread (no nested waits)


def _waited(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        if getattr(_inside, "call", False):  # one RDBStorage method calling another
            return method(self, *args, **kwargs)
        _inside.call = True
        try:
            return self._patiently(name, method, args, kwargs)
        finally:
            _inside.call = False

    return call


class PatientStorage(optuna.storages.RDBStorage):
    """RDBStorage that waits out transient database errors (module docstring).

    `patience`: seconds an outage is waited out, from its first error (0: not at all);
    `shown`: the URL as the user may see it (no password); `say`: where the two lines of
    an outage go (stderr)."""

    def __init__(
        self,
        url: str,
        *,
        patience: float = DEFAULT_PATIENCE_S,
        shown: str | None = None,
        say: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._patience = patience
        self._shown = shown or "the storage"
        self._say = say or _say
        self._lock = threading.Lock()
        self._down_since: float | None = None  # time.monotonic() of the outage's first error
        self._quiet_until = 0.0  # no stale trials judged before this (after an outage)
        self._wait_for_database(lambda: super(PatientStorage, self).__init__(url, **kwargs))

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_lock", None)
        state.pop("_say", None)
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state["_lock"], state["_say"] = threading.Lock(), _say
        super().__setstate__(state)

    def _wait_for_database(self, fn: Callable[[], Any]) -> Any:
        return self._patiently("__init__", lambda _self: fn(), (), {})

    def _patiently(
        self, name: str, method: Callable[..., Any], args: Sequence[Any], kwargs: dict
    ) -> Any:
        tries = 0
        while True:
            try:
                result = method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if tries and name == "set_trial_state_values" and self._landed(args, kwargs):
                    result = True  # the earlier try committed; its reply was lost
                else:
                    raise
            except Exception as e:
                reason = transient(e)
                if reason is None or self._patience <= 0:
                    raise
                down_for = self._outage(reason)
                if down_for >= self._patience:
                    raise StorageOutage(
                        f"the database {self._shown} was unreachable for {down_for:.0f} s "
                        f"(--storage-patience {self._patience:g}): {reason}"
                    ) from e
                wait = min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** min(tries, 10))
                time.sleep(min(wait * random.uniform(0.5, 1.0), self._patience - down_for))
                tries += 1
                continue
            self._back()
            return result

    def _landed(self, args: Sequence[Any], kwargs: dict) -> bool:
        """Whether set_trial_state_values(trial_id, state, values) is what is stored."""
        call = inspect.signature(optuna.storages.RDBStorage.set_trial_state_values)
        given = call.bind(self, *args, **kwargs)
        given.apply_defaults()
        trial_id, state, values = (given.arguments[k] for k in ("trial_id", "state", "values"))
        t = optuna.storages.RDBStorage.get_trial(self, trial_id)
        return t.state == state and (values is None or list(t.values or []) == list(values))

    def _outage(self, reason: str) -> float:
        """Seconds since this outage began (said when it begins)."""
        now = time.monotonic()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                self._say(
                    f"note: the database {self._shown} is unreachable ({reason}); waiting "
                    f"up to {self._patience:g} s for it (--storage-patience), trials in "
                    "flight go on"
                )
            return now - self._down_since

    def _back(self) -> None:
        if self._down_since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._down_since is None:
                return
            down_for = time.monotonic() - self._down_since
            self._down_since = None
            # every worker's heartbeats stopped with ours: judge none stale until each has
            # had a heartbeat interval (and a backoff) to write again
            self._quiet_until = time.monotonic() + (self.grace_period or 0)
        self._say(f"note: the database {self._shown} is back after {down_for:.0f} s")

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if time.monotonic() < self._quiet_until:
            return []
        return self._patiently(
            "_get_stale_trial_ids",
            optuna.storages.RDBStorage._get_stale_trial_ids,
            (study_id,),
            {},
        )

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._patiently(
                "record_heartbeat", optuna.storages.RDBStorage.record_heartbeat, (trial_id,), {}
            )
        except StorageOutage:
            pass  # a heartbeat missed: the trial's own writes stop the run, in one line


for _name in DATABASE_CALLS:
    setattr(PatientStorage, _name, _waited(_name))
