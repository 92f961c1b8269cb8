"""What every layer of nas raises, and how a stop becomes an exception.

A user-facing error (UsageError, ConfigError, DataError) is printed by the commands as one
line, exit status 2 (nas.cli.run_cli). Ctrl-C (SIGINT), SIGTERM (`timeout`, `kill`, SLURM,
`docker stop`) and SIGHUP (a closed terminal) all stop nas the same way: a
KeyboardInterrupt (Interrupted for the last two), so a running trial is marked FAIL with
the signal's name, and the exit status is 128 + the signal number (130, 143, 129)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "ConfigError",
    "DataError",
    "Interrupted",
    "STOP_SIGNALS",
    "StopFlag",
    "UsageError",
    "error_line",
    "exception_chain",
    "first_line",
    "interruption",
    "stop_signals",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled exactly like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interruption(e: KeyboardInterrupt) -> tuple[str, int]:
    """(what stopped us, exit status) for Ctrl-C or a stop signal."""
    if isinstance(e, Interrupted):
        return e.args[0], 128 + e.signum
    return "Ctrl-C", 128 + signal.SIGINT


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise Interrupted in the main thread (then restored)."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    saved = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def exception_chain(e: BaseException) -> list[BaseException]:
    """`e`, then what it was raised from or while handling, and so on (no cycles)."""
    chain: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return chain


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of e's message (at most `limit` characters), or its type's name
    where the message is empty."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


def error_line(e: BaseException, limit: int = 200) -> str:
    """'TypeName: first line of the message', or the type's name alone."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else type(e).__name__


class ConfigError(ValueError):
    """An architecture (or its JSON) that is malformed or cannot run."""


class DataError(Exception):
    """The data is missing, corrupt or unusable (a user-facing, one-line error)."""


class StopFlag:
    """Set by the main thread when a stop signal arrives; checked by trial threads."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._signum: int | None = None

    def set(self, e: KeyboardInterrupt) -> None:
        self._signum = e.signum if isinstance(e, Interrupted) else None
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise the interruption the main thread received (Ctrl-C or a stop signal)."""
        if self._event.is_set():
            raise KeyboardInterrupt() if self._signum is None else Interrupted(self._signum)
