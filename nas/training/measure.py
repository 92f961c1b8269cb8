"""What an architecture costs when it runs: CPU latency, GPU latency and throughput, and
the GPU memory of a training step. (Counted costs, parameters and MACs, are nas.cost's.)

Every figure is a median over repeated runs after untimed warm-up, and comes with its
unit, its device, its number of runs and how far apart its runs were (`Measured.to_dict`,
a trial's `costs` entry).

No network is judged by one disturbed round (`steady`): other work on the machine only
ever slows runs down, so a CPU round whose runs spread wide (quartiles more than WIDE of
the median apart), or whose figure lies within NEAR of a budget it will be judged by, is
timed again, up to ROUNDS rounds, and the steady round with the lowest median is kept.
Where every round was wide, the lowest is stored with `noisy` set, and shown so.

The CPU figure of a trial is the eager network's: a stand-in for what nas ships, the
AOTInductor package (nas.deploy), which ranks networks roughly alike but runs 0.24 to
1.03 times as long (benchmarks/shipped_latency.py); a network the stand-in puts over a budget is
timed as shipped before it is ruled out (nas.study.objective), and nas.export times its
pick as shipped.

CPU latency: batch 1, fp32, eval mode, on ONE intra-op thread, so that it neither
depends on the machine's core count nor takes cores from anything else. The thread
count is set for the measuring thread only and restored (with OpenMP, PyTorch's count is
per thread once a thread has started: other trial threads keep theirs; they fix theirs
under the same lock when they start, `pin_threads`). Weights are the fresh
initialisation: dense fp32 CPU kernels take the same time whatever the weights are.

GPU latency: batch 1, a bf16 copy of the network (weights cast once, as one would deploy
it; under autocast every replay would cast every weight again), channels_last, replayed
as a CUDA graph (the launch cost of hundreds of small kernels is what a deployed small
network pays without one too, but a graph is how one would deploy it), timed with CUDA
events around each replay on the trial's own stream. Throughput: the same at a large
batch. Both are only meaningful with the GPU to themselves (nas.search --concurrency 1).

Training memory: the bytes of weights and momentum plus the step's CUDA-graph memory
pool (activations, gradients), read from the allocator's segments of that pool
(nas.training.gpu), so that trials running beside it (--concurrency) do not count. Two limits:
segments count whole (the allocator gives requests up to 1 MB 2 MB segments, and
requests of 1 to 10 MB 20 MB segments: the figure moves in steps of up to 20 MB), and
cuBLAS and cuBLASLt workspaces, which live outside the pool, are left out (MEMORY_NOTE,
stored beside each figure).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from nas.arch.config import ArchConfig
from nas.arch.model import build_model

__all__ = [
    "CPU_RUNS",
    "GPU_RUNS",
    "MEMORY_NOTE",
    "Measured",
    "cpu_latency",
    "cpu_name",
    "gpu_latency_and_throughput",
    "pin_threads",
    "steady",
    "summarise",
    "time_runs",
]

# 3 untimed runs (or 0.5 s); then 21 timed runs, or as many as 2 s allow but at least 5:
# an odd count for a clean median, and a bound on the time a large network takes
CPU_WARMUP, CPU_RUNS, CPU_SECONDS = 3, 21, 2.0
# Re-timing (steady): a round with its quartiles more than 20 % of its median apart was
# disturbed (nas.doctor says so too: sub-ms networks on the quiet 2-core VM spread 5 to
# 12 %); within 25 % of a budget the figure decides, so it is confirmed; at most 3 rounds,
# so a network costs at most 3x its timing.
WIDE, NEAR, ROUNDS = 0.20, 0.25, 3
# A batch-1 replay of these networks takes well under 5 ms, so 50 timed replays cost under
# 0.25 s and their median ignores the odd slow replay; 10 untimed ones first (clocks up).
GPU_WARMUP, GPU_RUNS = 10, 50
THROUGHPUT_BATCH = 1024  # 10 replays at it, after 2 untimed
MEMORY_NOTE = (
    "weights + momentum + the step graph's memory pool, in whole allocator segments (2 MB "
    "for requests up to 1 MB, 20 MB for 1-10 MB: steps of up to 20 MB); cuBLAS/cuBLASLt "
    "workspaces not included"
)

# Setting the thread count for one measurement and restoring it: one at a time.
_THREADS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Measured:
    value: float
    unit: str
    device: str
    runs: int  # timed runs the median is over
    spread: float  # (75th - 25th percentile) / median of the runs: how steady they were
    fastest: float  # the fastest run, same unit (interference only ever slows a run)
    rounds: int = 1  # rounds timed (steady); the figure is the best steady round's
    noisy: bool = False  # every round spread wider than WIDE

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "device": self.device,
            "runs": self.runs,
            "spread": round(self.spread, 4),
            "fastest": self.fastest,
            "rounds": self.rounds,
            "noisy": self.noisy,
        }


def steady(time_round: Callable[[], Measured], budget: float | None = None) -> Measured:
    """Rounds of `time_round` until the latest is steady (quartiles within WIDE of the
    median) and the figure is not within NEAR of a `budget` (same unit); at most ROUNDS.
    The figure is the steady round with the lowest median (interference only ever adds
    time), or, if no round was steady, the lowest of all, flagged noisy."""
    rounds = [time_round()]

    def best() -> Measured:
        calm = [m for m in rounds if m.spread <= WIDE]
        return min(calm or rounds, key=lambda m: m.value)

    while len(rounds) < ROUNDS:
        near = budget is not None and abs(best().value - budget) <= NEAR * budget
        if rounds[-1].spread <= WIDE and not near:
            break
        rounds.append(time_round())
    noisy = all(m.spread > WIDE for m in rounds)
    return replace(best(), rounds=len(rounds), noisy=noisy)


def pin_threads() -> None:
    """In a new trial thread: take the process's intra-op thread count now, outside any
    CPU latency measurement (which lowers it to 1 for a moment)."""
    with _THREADS_LOCK:
        torch.set_num_threads(torch.get_num_threads())


def summarise(times: list[float], unit: str, device: str, scale: float) -> Measured:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    median = statistics.median(times)
    spread = (q[2] - q[0]) / median
    return Measured(median * scale, unit, device, len(times), spread, min(times) * scale)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def time_runs(run: Callable[[], object]) -> list[float]:
    """Seconds of each timed call of `run`, after CPU_WARMUP untimed calls (or 0.5 s):
    CPU_RUNS calls, or as many as CPU_SECONDS allow but at least 5."""
    start = time.perf_counter()
    for _ in range(CPU_WARMUP):  # or 0.5 s, for the largest networks
        run()
        if time.perf_counter() - start > 0.5:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < CPU_RUNS and (len(times) < 5 or time.perf_counter() - start < CPU_SECONDS):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return times


@torch.no_grad()
def cpu_latency(
    config: ArchConfig, model: nn.Module | None = None, *, budget_ms: float | None = None
) -> Measured:
    """Median ms per image at batch 1 on one CPU thread, of the eager network (see the
    module docstring), re-timed while disturbed or within NEAR of `budget_ms`."""
    model = (model or build_model(config)).eval()
    x = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
    device = f"cpu, 1 thread, eager ({cpu_name()})"

    def one_round() -> Measured:
        with _THREADS_LOCK:
            saved = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                times = time_runs(lambda: model(x))
            finally:
                torch.set_num_threads(saved)
        return summarise(times, "ms", device, 1000)

    return steady(one_round, budget_ms)


def gpu_latency_and_throughput(
    config: ArchConfig, device: torch.device
) -> tuple[Measured, Measured]:
    """(ms per image at batch 1, images/s at batch THROUGHPUT_BATCH) on `device`, as CUDA
    graphs replayed on the current stream (the caller's own)."""
    from nas.training.gpu import capture_forward
    from nas.training.step import memory_format

    bf16 = torch.bfloat16
    model = build_model(config).to(device=device, dtype=bf16, memory_format=memory_format(device))
    model.eval()
    name = torch.cuda.get_device_name(device)
    out = []
    for batch, warm, runs in ((1, GPU_WARMUP, GPU_RUNS), (THROUGHPUT_BATCH, 2, 10)):
        x = torch.zeros(batch, config.in_channels, config.image_size, config.image_size)
        x = x.to(device=device, dtype=bf16, memory_format=memory_format(device))

        def forward(x: torch.Tensor = x) -> torch.Tensor:
            with torch.no_grad():
                return model(x)

        graph = capture_forward(forward, device)
        for _ in range(warm):
            graph.replay()
        stream = torch.cuda.current_stream(device)
        times = []
        for _ in range(runs):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record(stream)
            graph.replay()
            end.record(stream)
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1000)  # seconds
        out.append((batch, times))
        graph.reset()
    (_, lat), (batch, tput) = out
    latency = summarise(lat, "ms", f"{name}, bf16 weights, CUDA graph", 1000)
    s = summarise(tput, "images/s", f"{name}, bf16 weights, CUDA graph, batch {batch}", 1.0)
    throughput = Measured(
        batch / s.value, "images/s", s.device, s.runs, s.spread, batch / s.fastest
    )
    return latency, throughput
