"""A throwaway PostgreSQL server from Debian's packages (initdb + pg_ctl in a temporary
folder, on 127.0.0.1, trust authentication for the role `nas`), and a throwaway PgBouncer
in front of it with the pooling settings of docs/pgbouncer.ini: for the tests of the
multi-machine storage and for benchmarks/storage_load.py."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "PGBOUNCER_INI",
    "free_port",
    "pg_bin",
    "pgbouncer_bin",
    "restart_pgbouncer",
    "start_postgres",
    "stop_postgres",
    "throwaway_pgbouncer",
    "throwaway_postgres",
]

PGBOUNCER_INI = Path(__file__).resolve().parents[1] / "docs" / "pgbouncer.ini"


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
    as_user = _not_root(root)  # initdb refuses root
    port, data = free_port(), root / "data"

    def run(*cmd: str) -> None:
        subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "nas", "--auth=trust", "-E", "UTF8")
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    if max_connections is not None:
        opts += f" -c max_connections={max_connections}"
    start = [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log")]
    run(*start, "-w", "start")
    stop = [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
    _SERVERS[port] = (lambda: run(*stop), lambda: run(*start, "-w", "start"))
    try:
        yield bindir, port
    finally:
        _SERVERS.pop(port, None)
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


_SERVERS: dict[int, tuple] = {}  # port -> (stop, start) of a running throwaway server


def stop_postgres(port: int) -> None:
    """Stop the throwaway server on `port` as an administrator does for maintenance
    (pg_ctl stop -m fast: sessions terminated, transactions rolled back)."""
    _SERVERS[port][0]()


def start_postgres(port: int) -> None:
    """Start the stopped throwaway server on `port` again (same data, same port)."""
    _SERVERS[port][1]()


def _not_root(root: Path) -> list[str]:
    """The command prefix that runs a server as Debian's postgres user when we are root
    (initdb and pgbouncer refuse root), giving it `root`; [] otherwise."""
    if os.geteuid() != 0:
        return []
    shutil.chown(root, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--"]


def pgbouncer_bin() -> str | None:
    """Debian's pgbouncer (in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")


@contextmanager
def throwaway_pgbouncer(
    server_port: int, pool_size: int | None = None, scram: tuple[str, str] | None = None
) -> Iterator[int]:
    """Yields the port of a PgBouncer in front of the throwaway server on `server_port`:
    docs/pgbouncer.ini as shipped (transaction pooling, its client and pool sizes), but
    for where it listens, its files and any database name passed through. Clients log in
    as the server's trust role nas, without a password; or, with scram (role, its SCRAM
    secret from pg_authid), as that role with its password, by the shipped SCRAM lines.
    pool_size replaces default_pool_size. Stopped on exit. RuntimeError without the
    binary."""
    binary = pgbouncer_bin()
    if binary is None:
        raise RuntimeError("pgbouncer not found (apt-get install pgbouncer)")
    root = Path(tempfile.mkdtemp(prefix="nas-pgbouncer-"))
    port = free_port()
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(PGBOUNCER_INI)
    ini["databases"] = {"*": f"host=127.0.0.1 port={server_port}"}
    ini["pgbouncer"].update(
        listen_addr="127.0.0.1",
        listen_port=str(port),
        unix_socket_dir=str(root),
        auth_file=str(root / "userlist.txt"),
        logfile=str(root / "pgbouncer.log"),
        pidfile=str(root / "pgbouncer.pid"),
    )
    if pool_size is not None:
        ini["pgbouncer"]["default_pool_size"] = str(pool_size)
    if scram is None:
        ini["pgbouncer"]["auth_type"] = "trust"
    role, secret = scram or ("nas", "")
    (root / "userlist.txt").write_text(f'"{role}" "{secret}"\n')
    with open(root / "pgbouncer.ini", "w") as f:
        ini.write(f)
    as_user = ["-u", "postgres"] if _not_root(root) else []  # it switches user itself
    for f in root.iterdir() if as_user else ():
        shutil.chown(f, "postgres", "postgres")
    log = root / "pgbouncer.log"
    command = [binary, *as_user, "-q", str(root / "pgbouncer.ini")]
    procs = [_start_pgbouncer(command, port, log)]

    def restart(down_s: float) -> None:
        _stop(procs[-1])
        time.sleep(down_s)
        procs.append(_start_pgbouncer(command, port, log))

    _BOUNCERS[port] = restart
    try:
        yield port
    finally:
        _BOUNCERS.pop(port, None)
        _stop(procs[-1])
        shutil.rmtree(root, ignore_errors=True)


_BOUNCERS: dict[int, Any] = {}  # port -> restart(down_s) of a running throwaway PgBouncer


def restart_pgbouncer(port: int, down_s: float) -> None:
    """Stop the throwaway PgBouncer on `port` (SIGTERM: it closes every client and server
    connection), wait `down_s`, start it again on the same port."""
    _BOUNCERS[port](down_s)


def _start_pgbouncer(command: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(command)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                said = log.read_text() if log.exists() else "no log"
                raise RuntimeError(f"pgbouncer did not start: {said}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
