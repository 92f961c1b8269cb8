"""What every `python -m nas.*` command shares: its parser and its error convention.

A user-facing error (nas.errors) is one line on stderr, `nas.X: error: ...`, and exit
status 2, without a traceback; argparse's own errors follow the same rule, and so do
storage failures (a read-only, locked or full database), with every password shown as
***. Ctrl-C, SIGTERM and SIGHUP stop a command the same way (nas.errors.stop_signals):
one line, and the exit status 128 + the signal number (130, 143, 129).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable
from typing import NoReturn

from nas.errors import (
    ConfigError,
    UsageError,
    interruption,
    stop_signals,
)
from nas.study.storage import (
    storage_failure,
)
from nas.study.urls import hide_secrets

__all__ = [
    "NONE",
    "add_skip_bad_images",
    "at_least",
    "auto_or",
    "int_at_least",
    "make_parser",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "positive_or_none",
    "run_cli",
    "slurm_minutes",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def make_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return _Parser(
        prog=f"python -m {prog}",
        description=textwrap.fill(description, 79),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--trial 2` is a typo to name, not --trials to guess
    )


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


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""
    return lambda text: int_at_least(text, low, f"an integer >= {low}")


def non_negative_int(text: str) -> int:
    return int_at_least(text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return v


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


NONE = "none"  # a --max-* value that removes a continued study's limit


def positive_or_none(text: str) -> float | str:
    """A positive number, or 'none' (kept as NONE: remove the limit)."""
    if text.strip().lower() == NONE:
        return NONE
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive number, or {NONE} to remove the limit, got {text!r}"
        ) from None


def add_skip_bad_images(p: argparse.ArgumentParser, default: str) -> None:
    """--skip-bad-images, as every command that reads a folder of images takes it."""
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="a folder's images that cannot be read (truncated, not an image) are left out, "
        f"with one note of how many, instead of stopping the run ({default})",
    )


def auto_or(high: int) -> Callable[[str], int]:
    """An argparse type: "auto" (0) or an integer in 1..high."""

    def parse(text: str) -> int:
        if text == "auto":
            return 0
        try:
            v = int(text)
        except ValueError:
            v = 0
        if not 1 <= v <= high:
            raise argparse.ArgumentTypeError(f"expected auto or 1..{high}, got {text!r}")
        return v

    return parse


# SLURM's --time forms: MINUTES, MINUTES:SECONDS, H:MM:SS, D-H, D-H:MM, D-H:MM:SS
TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_minutes(text: str) -> int:
    """An argparse type: a SLURM time limit (2:00:00, 90, 1-12:00, ...) in whole minutes."""
    m = TIME.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"expected a SLURM time such as 2:00:00, 90 (minutes) or 1-12:00, got {text!r}"
        )
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H[:MM[:SS]]
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:  # H:MM:SS
        hours, minutes, seconds = a, b, c
    else:  # MINUTES[:SECONDS]
        hours, minutes, seconds = 0, a, b or 0
    total = math.ceil(((days or 0) * 24 + hours) * 60 + minutes + seconds / 60)
    if total < 1:
        raise argparse.ArgumentTypeError(
            f"expected a time limit of a minute or more, got {text!r}"
        )
    return total
