"""What every `python -m nas.*` command shares: its parser, its error convention, and how
it stops.

A user-facing error is one line on stderr, `nas.X: error: ...`, and exit status 2,
without a traceback; argparse's own errors follow the same rule, and so do storage
failures (a read-only, locked or full database). Ctrl-C (SIGINT), SIGTERM (`timeout`,
`kill`, SLURM, `docker stop`) and SIGHUP (a closed terminal) all stop a command the same
way: a KeyboardInterrupt, so a running trial is marked FAIL with the signal's name, and
the exit status is 128 + the signal number (130, 143, 129).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn
from urllib.parse import unquote

from nas.arch.config import ConfigError

__all__ = [
    "Interrupted",
    "UsageError",
    "error_line",
    "first_line",
    "hide_secrets",
    "int_at_least",
    "make_parser",
    "positive_int",
    "public_url",
    "run_cli",
    "stop_signals",
]

_SCHEME = re.compile(r"^[A-Za-z][\w+.-]*:?//")  # "postgresql://", or mistyped "postgresql//"
_SECRETS: set[str] = set()  # passwords seen in storage URLs: hidden in whatever nas prints


def public_url(url: str) -> str:
    """A storage URL as nas shows, stores and writes it: the password, if any, as ***
    (SQLAlchemy's convention). The password is remembered, so that hide_secrets also
    hides it where a database driver repeats it in a message. Mistyped URLs too: the
    user part is what stands before the last '@' (a password with an unescaped '@' is
    hidden whole, and each of its pieces)."""
    at = url.rfind("@")
    if at < 0:
        return url
    prefix = url[:at]
    scheme = _SCHEME.match(prefix)
    start = scheme.end() if scheme else 0
    colon = prefix.find(":", start)
    if colon < 0 or colon == len(prefix) - 1:
        return url
    password = prefix[colon + 1 :]
    pieces = {password, unquote(password), *password.split("@")}
    _SECRETS.update(p for p in pieces if p)
    return f"{prefix[: colon + 1]}***{url[at:]}"


def hide_secrets(text: str) -> str:
    """`text` with every password nas has seen in a storage URL shown as ***: the one
    place where nas hides them (public_url registers them), applied to every error line
    a command prints."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def make_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return _Parser(
        prog=f"python -m {prog}",
        description=textwrap.fill(description, 79),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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


def storage_failure(e: BaseException) -> str | None:
    """One line for a database that cannot be written or read (read-only file, lock held
    too long, full disk, lost server), from the driver's own message; None otherwise."""
    import optuna
    import sqlalchemy.exc

    for link in exception_chain(e):
        if isinstance(link, sqlalchemy.exc.OperationalError) and link.orig is not None:
            return first_line(link.orig, limit=10_000)
    if isinstance(e, (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)):
        return first_line(e, limit=10_000)
    return None


def run_cli(prog: str, body: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run a command's body: user errors become one line and exit status 2; Ctrl-C,
    SIGTERM and SIGHUP one line and 128 + the signal number."""
    try:
        with stop_signals():
            status = body(argv)
            sys.stdout.flush()  # a closed pipe shows here, not at exit as an ignored error
            return status
    except (UsageError, ConfigError) as e:
        print(hide_secrets(f"{prog}: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        what, status = interruption(e)
        print(f"{prog}: interrupted ({what})", file=sys.stderr)
        return status
    except BrokenPipeError:  # `nas.cost x.json | head -1`: the reader left; say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own recipe (signal docs)
        return 1
    except Exception as e:
        reason = storage_failure(e)
        if reason is None:
            raise
        print(hide_secrets(f"{prog}: error: storage failed: {reason}"), file=sys.stderr)
        return 2


def int_at_least(text: str, low: int, words: str) -> int:
    """argparse type helper: an integer >= low ('expected WORDS, got ...' otherwise)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected {words}, got {v}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return int_at_least(text, 1, "a positive integer")
