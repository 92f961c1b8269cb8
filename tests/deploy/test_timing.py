"""nas.deploy.timing: the shipped package timed in a fresh process, and re-timed when a
round is disturbed; the package itself, loaded by torch alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nas.deploy.timing import SHIPPED, describe_shipped, package_latency
from nas.training import measure
from nas.training.measure import Measured, steady


def test_the_package_is_timed_in_a_fresh_process_as_a_trial_is(cpu_package) -> None:
    m = package_latency(cpu_package, (28, 28))
    assert m.unit == "ms" and 0 < m.fastest <= m.value < 100
    assert 5 <= m.runs <= measure.CPU_RUNS and SHIPPED in m.device and "1 thread" in m.device
    line = describe_shipped(m, (28, 28))
    assert line.startswith(f"{m.value:.3g} ms per image as shipped") and "uint8 28x28" in line


def test_a_failing_fresh_process_is_one_line(tmp_path) -> None:
    bad = tmp_path / "not-a-package.pt2"
    bad.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="timing not-a-package.pt2 in a fresh process failed"):
        package_latency(bad, (28, 28))


# The package as a user loads it: torch alone, nas made unimportable, with the package's
# own input checks on (AOTI_RUNTIME_CHECK_INPUTS=1, docs/commands.md).
CHECKED = """
import sys
sys.modules["nas"] = None
import torch
run = torch._inductor.aoti_load_package(sys.argv[1])
print(tuple(run(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape))
print(tuple(run(torch.zeros(3, 50, 20, dtype=torch.uint8)).shape))
try:
    run(torch.zeros(1, 28, 28))
except RuntimeError as e:
    print("refused:", str(e).splitlines()[0])
"""


def test_the_package_checks_its_input_when_asked_and_takes_batch_one(cpu_package) -> None:
    env = {**os.environ, "AOTI_RUNTIME_CHECK_INPUTS": "1"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", CHECKED, str(cpu_package)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["(1, 10)", "(3, 10)"]
    assert lines[2].startswith("refused:") and "dtype" in lines[2]


def rounds(*figures: tuple[float, float]):
    """A timer whose successive rounds give these (median, spread): noisy on purpose."""
    it = iter(figures)

    def one_round() -> Measured:
        value, spread = next(it)
        return Measured(value, "ms", "cpu", 21, spread, value * 0.9)

    return one_round


def test_steady_keeps_the_quiet_round_and_flags_what_stays_noisy() -> None:
    # a steady round far from any budget: timed once
    assert steady(rounds((2.0, 0.02))).rounds == 1
    # a disturbed round (quartiles 60 % apart) is timed again; the quiet one is kept
    m = steady(rounds((8.0, 0.6), (3.0, 0.03)))
    assert (m.value, m.rounds, m.noisy) == (3.0, 2, False)
    # near a budget (3 ms within 25 % of 2.8) a steady figure is confirmed, up to 3 rounds
    m = steady(rounds((3.0, 0.02), (2.9, 0.02), (2.95, 0.02)), budget=2.8)
    assert (m.value, m.rounds) == (2.9, 3)
    # disturbed in every round: the best kept, flagged noisy
    m = steady(rounds((9.0, 0.5), (7.0, 0.4), (8.0, 0.7)))
    assert (m.value, m.rounds, m.noisy) == (7.0, 3, True)
    # a steady round is preferred to a lower but disturbed one, and ends the timing
    m = steady(rounds((1.0, 0.5), (1.05, 0.02), (9.9, 0.9)))
    assert (m.value, m.rounds, m.noisy) == (1.05, 2, False)
