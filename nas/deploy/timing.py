"""The CPU latency of what nas ships, timed as its user would time it: the AOTInductor
package (nas.deploy.artifact) loaded in a fresh Python process that cannot import nas,
one intra-op thread, batch 1, uint8 images of the data's size in, the runs and warm-up of
a trial's own timing (nas.training.measure.time_runs, whose source the process runs), and
re-timed in a new process where a round is disturbed or near a budget
(nas.training.measure.steady).

The weights are a fresh initialisation: dense fp32 CPU kernels take the same time whatever
the weights are, so a pick is timed before it is trained (nas.export) and nas.train's
trained package times the same.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nas.arch.config import ArchConfig
from nas.arch.model import build_model
from nas.deploy.artifact import compile_package, export_program
from nas.errors import first_line
from nas.training import measure
from nas.training.measure import Measured, cpu_name, steady, summarise

__all__ = ["SHIPPED", "SHIPPED_FLOOR", "describe_shipped", "package_latency", "shipped_latency"]

SHIPPED = "AOTInductor package, fresh process"  # in a figure's device, beside the CPU's name
# The package's latency over the eager network's was 0.30 to 1.03 per round for three
# networks and 0.24 to 0.78 for eight more (benchmarks/shipped_latency.py, 2-core x86 VM):
# a network eager over a budget by more than 1 / 0.2 is not timed as shipped.
SHIPPED_FLOOR = 0.2

# What the fresh process runs: no nas (any import of it fails), torch alone.
_SCRIPT = """from __future__ import annotations
import json, sys, time
sys.modules["nas"] = None
import torch
torch.set_num_threads(1)
path, shape = sys.argv[1], json.loads(sys.argv[2])
CPU_WARMUP, CPU_RUNS, CPU_SECONDS = json.loads(sys.argv[3])
run_package = torch._inductor.aoti_load_package(path)
x = torch.zeros(1, *shape, dtype=torch.uint8)
{time_runs}
with torch.inference_mode():
    print(json.dumps(time_runs(lambda: run_package(x))))
"""


_TIME_RUNS = measure.time_runs  # the loop as written (a test may wrap the module's)


def _round(path: Path, shape: tuple[int, ...]) -> Measured:
    """One round in a fresh process; RuntimeError (one line) for whatever goes wrong."""
    loop = [measure.CPU_WARMUP, measure.CPU_RUNS, measure.CPU_SECONDS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        script = _SCRIPT.format(time_runs=inspect.getsource(_TIME_RUNS))
        done = subprocess.run(
            [sys.executable, "-I", "-c", script, str(path), json.dumps(shape), json.dumps(loop)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(last)
        times = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, RuntimeError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"timing {path.name} in a fresh process failed: {first_line(e)}") from e
    return summarise(times, "ms", f"cpu, 1 thread, {SHIPPED} ({cpu_name()})", 1000)


def package_latency(
    path: Path, shape: tuple[int, ...], budget_ms: float | None = None
) -> Measured:
    """ms per image at batch 1 of the CPU package at `path`, taking uint8 images of
    `shape` ((H, W) or (H, W, C)), each round in a fresh process."""
    return steady(lambda: _round(path, shape), budget_ms)


def shipped_latency(
    config: ArchConfig, shape: tuple[int, ...], budget_ms: float | None = None
) -> Measured:
    """The latency of `config` as nas ships it: its CPU package compiled here (tens of
    seconds), then timed (package_latency). RuntimeError if either step fails."""
    try:
        program = export_program(build_model(config), config, shape)
    except Exception as e:  # torch.export's errors vary by version
        raise RuntimeError(f"torch.export failed: {first_line(e)}") from e
    with tempfile.TemporaryDirectory(prefix="nas-ship-") as tmp:
        path = compile_package(program, Path(tmp) / "net.cpu.pt2")
        return package_latency(path, shape, budget_ms)


def describe_shipped(m: Measured, shape: tuple[int, ...]) -> str:
    """'0.54 ms per image as shipped (AOTInductor package, fresh process, 1 thread, batch 1,
    uint8 28x28; median of 21 runs, spread 4%)', flagged where noisy."""
    size = "x".join(map(str, shape[:2])) + (f"x{shape[2]}" if shape[2:] else "")
    noisy = (
        f"; NOISY after {m.rounds} rounds: other work on this machine? time it again"
        if m.noisy
        else ""
    )
    return (
        f"{m.value:.3g} ms per image as shipped ({SHIPPED}, 1 thread, batch 1, uint8 "
        f"{size}; median of {m.runs} runs, spread {m.spread:.0%}{noisy})"
    )
