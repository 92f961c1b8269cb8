"""What every `python -m nas.*` command shares: its parser and its error convention.

A user-facing error is one line on stderr, `nas.X: error: ...`, and exit status 2,
without a traceback; argparse's own errors follow the same rule. Ctrl-C is exit 130.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from typing import NoReturn

from nas.config import ConfigError

__all__ = ["UsageError", "make_parser", "run_cli"]


class UsageError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


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


def run_cli(prog: str, body: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run a command's body, turning user errors into one line and exit status 2."""
    try:
        return body(argv)
    except (UsageError, ConfigError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
