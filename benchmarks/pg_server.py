"""A throwaway PostgreSQL server from Debian's packages (initdb + pg_ctl in a temporary
folder, on 127.0.0.1, trust authentication for the role `nas`): for the tests of the
multi-machine storage and for benchmarks/storage_load.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["free_port", "pg_bin", "throwaway_postgres"]


def pg_bin() -> Path | None:
    """The folder of Debian's newest PostgreSQL server binaries, or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def throwaway_postgres(max_connections: int | None = None) -> Iterator[tuple[Path, int]]:
    """Yields (bin dir, port) of a fresh server; max_connections None keeps PostgreSQL's
    default (100). Stopped and removed on exit. RuntimeError without the binaries."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as Debian's postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres", "postgres")
    port, data = free_port(), root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "nas", "--auth=trust", "-E", "UTF8")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    if max_connections is not None:
        opts += f" -c max_connections={max_connections}"
    run(
        str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"
    )
    try:
        yield bindir, port
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
