"""A database password given to nas appears nowhere nas prints, stores or writes.

Against the throwaway PostgreSQL server with a role that must give its password
(scram-sha-256): searches with the password in the URL (two worker processes, whose
argv is read while they run) and with PGPASSWORD and a URL without one, runs that fail,
a report and an export; then everything is searched for the password: every line
printed, every file written, every row of the study's database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import psycopg

from conftest import TINY
from nas.study.urls import hide_secrets, public_url


def nas(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def children_argv(pid: int, timeout: float = 120) -> list[str]:
    """The command lines of `pid`'s child processes, once it has 2 or more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                if f"\nPPid:\t{pid}\n" in status.read_text():
                    found.append((status.parent / "cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
        if len(found) >= 2:
            return found
        time.sleep(0.1)
    raise AssertionError("the search started no worker processes")


def test_a_password_is_nowhere_in_what_nas_prints_stores_or_writes(
    postgres_server, postgres_password, tmp_path: Path, real_data_dir
) -> None:
    _, port = postgres_server
    role, password, db = postgres_password
    with_password = f"postgresql://{role}:{password}@127.0.0.1:{port}/{db}"
    without = f"postgresql://{role}@127.0.0.1:{port}/{db}"  # the README's form
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSFILE"] = str(tmp_path / "no-pgpass")  # no ~/.pgpass to fall back on
    printed: list[str] = []

    # 1. The password in the URL, two worker processes: their argv, read while they run.
    search = [*TINY, "--workers", "2", "--trials", "4", "--study", "a", "--storage"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nas.search", *search, with_password],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    argv = children_argv(proc.pid)
    own = (Path("/proc") / str(proc.pid) / "cmdline").read_bytes().decode()
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert password in own  # the command the user typed holds it; nothing else may
    assert not [a for a in argv if password in a], argv
    assert f"postgresql://{role}:***@127.0.0.1:{port}/{db}" in out  # shown hidden
    printed.append(out)

    # 2. No password in the URL: libpq's PGPASSWORD; without it, one line and exit 2.
    r = nas(["nas.search", *TINY, "--trials", "1", "--study", "b", "--storage", without], tmp_path,
            {**env, "PGPASSWORD": password})  # fmt: skip
    assert r.returncode == 0, r.stderr
    printed += [r.stdout, r.stderr]
    r = nas(["nas.search", *TINY, "--trials", "1", "--study", "c", "--storage", without], tmp_path,
            env)  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "password" in r.stderr  # libpq says one was needed

    # 3. Runs that fail: an unreachable server (waited for a second, said in a note), a
    # wrong password (at once); each one error line, exit 2.
    for url, lines in (
        (f"postgresql://{role}:{password}@127.0.0.1:1/{db}", 2),
        (f"postgresql://{role}:{password}x@127.0.0.1:{port}/{db}", 1),
    ):
        argv = ["nas.search", *TINY, "--trials", "1", "--storage", url, "--storage-patience", "1"]
        r = nas(argv, tmp_path, env)
        assert r.returncode == 2 and r.stderr.count("\n") == lines, r.stderr
        assert "postgresql://nas_pw:***@" in r.stderr.splitlines()[-1], r.stderr
        printed += [r.stdout, r.stderr]

    # 4. What comes after a search: the report page and its files, an export.
    for args in (
        ["nas.report", "--study", "a", "--storage", with_password],
        ["nas.export", "--study", "a", "--storage", with_password, "--out", "best.json"],
    ):
        r = nas(args, tmp_path, env)
        assert r.returncode == 0, r.stderr
        printed += [r.stdout, r.stderr]

    forms = {password, quote(password, safe="")}
    for text in printed:
        assert not [f for f in forms if f in text], text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in written) and (tmp_path / "best.json").is_file()
    for path in written:
        data = path.read_bytes()
        assert not [f for f in forms if f.encode() in data], path
    with psycopg.connect(
        host="127.0.0.1", port=port, user=role, password=password, dbname=db
    ) as conn:
        tables = [
            r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        ]
        assert "trial_user_attributes" in tables
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):  # noqa: S608 - our own table names
                assert not [f for f in forms if f in repr(row)], (table, row)


def test_public_url_and_hide_secrets() -> None:
    url = "postgresql+psycopg://me:p%40ss:w0rd@db.example:5432/nas"
    assert public_url(url) == "postgresql+psycopg://me:***@db.example:5432/nas"
    # the driver may repeat the password decoded, or the whole URL: both are hidden
    assert hide_secrets(f"auth failed for p@ss:w0rd at {url}") == (
        "auth failed for *** at postgresql+psycopg://me:***@db.example:5432/nas"
    )
    for plain in ("postgresql://me@db/nas", "sqlite:///studies/x.db", "sqlite:///:memory:"):
        assert public_url(plain) == plain


def test_a_mistyped_url_hides_its_password_too(capsys) -> None:
    """No scheme, a missing ':', an unescaped '@' in the password: hidden all the same, in
    the error line nas.search prints."""
    from nas.search import main

    for url, secret in (
        ("postgresql//u:Pw-one-1@127.0.0.1:1/db", "Pw-one-1"),
        ("u:Pw-two-2@127.0.0.1", "Pw-two-2"),
        ("postgresql://u:Pw-th@ree-3@127.0.0.1:1/db", "ree-3"),
    ):
        assert main(["--trials", "1", "--storage", url]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "***" in err, err
        assert secret not in err and secret.split("@")[0] not in err, err
