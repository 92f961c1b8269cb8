"""nas.dashboard: optuna-dashboard serving a smoke study, as headless Chromium renders it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser import chromium, screenshot
from conftest import free_port
from nas.dashboard import main
from nas.report import main as report
from nas.search import main as search

TINY = ["--preset", "cifar", "--growth-rate", "8:16:4", "--convs", "1:3", "--budget", "smoke"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, real_data_dir):
    d = tmp_path_factory.mktemp("dash")
    url = f"sqlite:///{d}/studies/dash.db"
    started_in = os.getcwd()  # where pytest started: given back, whatever it was
    os.chdir(d)
    try:
        assert (
            search(
                [
                    *TINY,
                    "--trials",
                    "6",
                    "--max-mmacs",
                    "15",
                    "--sampler",
                    "random",
                    "--seed",
                    "1",
                    "--study",
                    "dash",
                    "--storage",
                    url,
                ]
            )
            == 0
        )
        # the budget tightened in a continued run: trials of 10 to 15 MMACs, trained and
        # stored feasible, are over today's budget
        more = [*TINY, "--trials", "1", "--sampler", "random", "--seed", "2"]
        assert search([*more, "--max-mmacs", "10", "--study", "dash", "--storage", url]) == 0
        assert report(["--study", "dash", "--storage", url]) == 0
    finally:
        os.chdir(started_in)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nas.dashboard",
            "--study",
            "dash",
            "--storage",
            url,
            "--port",
            str(port),
        ],
        cwd=d,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            urllib.request.urlopen(f"{base}/api/studies", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"nas.dashboard exited: {proc.stdout.read()}")
            time.sleep(0.2)
    yield base, url
    proc.terminate()
    proc.wait(timeout=10)


def wait_for(driver, script: str, timeout: float = 30, equals: object = None):
    """Poll `script` until it returns something true (or, with `equals`, that value)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if (value == equals) if equals is not None else value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script} (last value {value!r})")


def test_dashboard_shows_study_objectives_and_pareto_front(served) -> None:
    served, _ = served
    driver = chromium()
    try:
        driver.get(f"{served}/dashboard")
        wait_for(driver, "return document.body.innerText.includes('dash')")
        screenshot(driver, "dashboard-home")
        driver.get(f"{served}/dashboard/studies/1")
        wait_for(driver, "return document.body.innerText.includes('val_accuracy')")
        text = driver.execute_script("return document.body.innerText")
        assert "MMACs (fvcore)" in text
        # every complete trial, the infeasible ones drawn apart: waits for all 7, since the
        # plot may draw its points in more than one pass
        wait_for(
            driver,
            "const g = document.getElementById('graph-pareto-front');"
            "return g ? g.querySelectorAll('.scatterlayer .point').length : 0",
            equals=7,
        )
        assert "Infeasible" in driver.execute_script("return document.body.innerText")
        screenshot(driver, "dashboard-study")
    finally:
        driver.quit()


def test_unknown_study_is_one_line(tmp_path: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    assert main(["--study", "nope", "--storage", url]) == 2
    assert "no study database at" in capsys.readouterr().err


def test_port_taken_or_out_of_range_is_one_line(tmp_path: Path, capsys) -> None:
    import socket

    import optuna

    url = f"sqlite:///{tmp_path}/x.db"
    optuna.create_study(study_name="x", storage=url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--study", "x", "--storage", url, "--artifacts", str(tmp_path / "a")]
        assert main([*args, "--port", str(port)]) == 2
        assert not (tmp_path / "a").exists()  # nothing made before the error
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert "Address already in use" in err
    assert main([*args, "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    assert main([*args, "--host", "192.0.2.1", "--port", "8080"]) == 2  # not this machine's
    assert "cannot listen on 192.0.2.1:8080: Cannot assign requested address" in (
        capsys.readouterr().err
    )


def test_after_a_budget_change_the_dashboard_says_which_trials_it_marks_otherwise(
    served,
) -> None:
    """Optuna keeps a finished trial's constraints as they were: after --max-mmacs 15
    became 10, the dashboard would mark the trained 10-15 MMAC networks feasible, while
    report and export judge them over. The study's note, read through the dashboard's own
    API and shown on its page, names today's budget and exactly those trials; export's
    pick is none of them."""
    import json
    import re

    import optuna

    from nas.export import main as export

    base, url = served
    detail = json.loads(urllib.request.urlopen(f"{base}/api/studies/1", timeout=10).read())
    body = detail["note"]["body"]
    assert "budgets changed since some trials ran" in body and "MACs <= 10" in body
    study = optuna.load_study(study_name="dash", storage=url)
    between = {
        t.number
        for t in study.trials
        if t.user_attrs.get("trained") and 10 < t.user_attrs["macs_fvcore"] / 1e6 <= 15
    }
    listed = re.search(r"over today's budgets, shown feasible here: trials? ([\d, ]+)", body)
    assert between and listed, body
    assert {int(n) for n in listed[1].split(",")} == between
    out = Path(url.removeprefix("sqlite:///")).parent / "pick.json"
    assert (
        export(["--study", "dash", "--storage", url, "--out", str(out), "--pick", "accuracy"]) == 0
    )
    assert json.loads(out.read_text())["trial"] not in between
    driver = chromium()
    try:
        driver.get(f"{base}/dashboard/studies/1/note")  # the study's note, rendered
        wait_for(driver, "return document.body.innerText.includes('budgets changed since')")
        screenshot(driver, "dashboard-budgets-note")
    finally:
        driver.quit()
