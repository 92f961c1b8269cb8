"""nas.cli: how every command stops and fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nas.cli import run_cli


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_stop_signals_end_like_ctrl_c(signum: int, status: int, capsys) -> None:
    def body(argv: list[str] | None) -> int:
        during.append(signal.getsignal(signum))
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not interrupt")

    before = signal.getsignal(signum)
    during: list[object] = []
    assert run_cli("nas.x", body, []) == status
    assert capsys.readouterr().err == f"nas.x: interrupted ({signal.Signals(signum).name})\n"
    assert during[0] is not before  # the command's own handler was installed ...
    assert signal.getsignal(signum) is before  # ... and the one before it is back


def test_ctrl_c_is_130(capsys) -> None:
    def body(argv: list[str] | None) -> int:
        raise KeyboardInterrupt

    assert run_cli("nas.x", body, []) == 130
    assert capsys.readouterr().err == "nas.x: interrupted (Ctrl-C)\n"


def test_read_only_database_is_one_line(tmp_path: Path, real_data_dir) -> None:
    """A study database that may be read but not written (here opened read-only, as
    SQLite's URI allows; a file without write permission gives the same error to a user
    who is not root): nas.search and nas.report say so in one line, exit 2."""
    from conftest import TINY

    path = tmp_path / "ro.db"
    url = f"sqlite:///{path}"
    search = ["nas.search", *TINY, "--trials", "1", "--study", "ro"]
    assert subprocess.run([sys.executable, "-m", *search, "--storage", url]).returncode == 0
    read_only = f"sqlite:///file:{path}?mode=ro&uri=true"
    report = ["nas.report", "--study", "ro", "--out", f"{tmp_path}/r.html"]
    for command in (search, report):
        proc = subprocess.run(
            [sys.executable, "-m", *command, "--storage", read_only],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == (
            f"{command[0]}: error: storage failed: attempt to write a readonly database\n"
        )
    assert not (tmp_path / "file:").exists()
    # what only reads still works on a read-only database
    export = ["nas.export", "--study", "ro", "--out", f"{tmp_path}/best.json"]
    done = subprocess.run(
        [sys.executable, "-m", *export, "--storage", read_only], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "best.json").is_file()


def test_python_m_nas_lists_the_commands_and_scripts_are_installed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nas"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("nas.search", "nas.report", "nas.dashboard", "nas.export", "nas.cost"):
        assert f"python -m {command}" in out
    script = Path(sys.executable).parent / "nas-cost"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "MACs (fvcore)" in done.stdout


def test_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`nas.cost x.json | head -1`: no BrokenPipeError traceback. (`true` leaves before
    nas.cost writes, so the pipe is closed for certain.)"""
    config = tmp_path / "c.json"
    config.write_text('{"growth_rate": 8, "convs_per_block": [1, 1]}')
    done = subprocess.run(
        f"{sys.executable} -m nas.cost {config} 2>err.txt | true; cat err.txt",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.stdout == "" and done.stderr == ""


def test_help_lists_every_budget_fits_100_columns_and_says_what_options_do(capsys) -> None:
    from nas.report import main as report
    from nas.search import main as search
    from nas.train import main as train
    from nas.training.budget import BUDGETS

    texts = {}
    for name, command in (("search", search), ("train", train), ("report", report)):
        with pytest.raises(SystemExit) as e:
            command(["--help"])
        assert e.value.code == 0
        texts[name] = capsys.readouterr().out
        assert max(len(line) for line in texts[name].splitlines()) <= 100, name
    epilog = texts["search"][texts["search"].index("train budgets (--budget):") :]
    assert all(f"\n  {b} " in epilog for b in BUDGETS)  # each described, smoke-long too
    for option in ("--seed SEED", "--device {auto,cuda,cpu}"):
        described = texts["train"].split(option, 2)[2].split("\n  --")[0]
        assert len(described.split()) >= 8, option  # words of its own, not a bare option
    assert "in the study's own objectives" in " ".join(texts["report"].split())


def test_an_error_with_an_empty_message_is_still_one_line() -> None:
    """nas.doctor and the eager fallback name an error by its first line: an exception
    with no message at all is named by its type (indexing its first line raised)."""
    from nas.errors import error_line, first_line

    assert error_line(ValueError()) == "ValueError" and first_line(KeyError()) == "KeyError"
    assert error_line(RuntimeError("bad\nmore")) == "RuntimeError: bad"
    assert first_line(RuntimeError("x" * 500), limit=10) == "x" * 10


def test_an_abbreviated_option_is_refused_not_guessed(capsys) -> None:
    """`--trial 2` is a typo: named in one line, not taken for --trials (argparse's
    default), and `--max` does not reach the hidden --max-mflops."""
    from nas.export import main as export
    from nas.search import main as search

    hint = ["--max-mflops", "5"]  # refused after parsing: the old parser stops there
    assert search(["--trial", "2", *hint]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --trial 2" in err and err.count("\n") == 1
    assert search(["--max", "5", *hint]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --max 5" in err and "mflops" not in err
    assert export(["--stud", "s", "--out", "x.json"]) == 2  # --study is required
    assert "required: --study" in capsys.readouterr().err
