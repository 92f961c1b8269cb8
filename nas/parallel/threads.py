"""K trials at once in one process (`nas.search --concurrency K`): threads, streams, stops.

One trial's small kernels leave most of a large GPU idle, and processes only take turns
on it. Threads of one process can share it: each trial runs in its own thread on its own
CUDA stream with its own CUDA graph and graph memory pool (nas.training.step), and a graph replay
releases the GIL, so replays of different trials overlap on the GPU while another
thread samples, counts MACs with fvcore or writes to storage. What must not interleave
is serialised: graph captures (nas.training.gpu.GRAPH_LOCK), seeding and drawing initial
weights (nas.arch.model), fvcore tracing (nas.cost) and sampling (nas.study.objective). A trial
synchronises its own stream, never the device.

Stopping: Ctrl-C and SIGTERM/SIGHUP arrive in the main thread only. It sets a StopFlag;
every trial thread raises the same interruption at its next training step, so each
running trial is failed with the signal's name, and the main thread re-raises it once
they have all ended.

On the CPU the threads share the cores: the intra-op thread count is the same as with
K=1, so a trial's numbers do not depend on K (they do depend on the thread count).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from nas.errors import StopFlag
from nas.training.gpu import slot_stream
from nas.training.measure import pin_threads

__all__ = [
    "GpuMonitor",
    "nvidia_smi",
    "run_concurrently",
]


@contextmanager
def _trial_context(device: torch.device, slot: int) -> Iterator[None]:
    """This thread as trial slot `slot`: on CUDA its own stream, made once per slot
    (nas.training.gpu), and its CPU thread count fixed now, outside any CPU latency measurement
    (nas.training.measure)."""
    pin_threads()
    with slot_stream(device, slot):
        yield


def run_concurrently(
    k: int, device: torch.device, body: Callable[[int], None], stop: StopFlag
) -> None:
    """body(slot) for slot 0..k-1, each in a thread with its own stream; wait for all.

    k == 1 runs body in this thread (signals interrupt it directly). A Ctrl-C or stop
    signal sets `stop` (the bodies raise it at their next step) and is raised again here
    once every thread has ended; so is the first error a body raised, after the others
    have been stopped.
    """
    if k == 1:
        with _trial_context(device, 0):
            body(0)
        return
    errors: list[BaseException] = []
    done = [threading.Event() for _ in range(k)]

    def run(slot: int) -> None:
        try:
            with _trial_context(device, slot):
                body(slot)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)
            if not isinstance(e, KeyboardInterrupt):
                stop.set(KeyboardInterrupt())  # a bug in one trial stops the others too
        finally:
            done[slot].set()

    threads = [
        threading.Thread(target=run, args=(slot,), name=f"nas-trial-{slot}", daemon=True)
        for slot in range(k)
    ]
    for t in threads:
        t.start()
    # Wait on events, not Thread.join: a KeyboardInterrupt landing inside join() can mark a
    # running thread as ended (CPython's bpo-45274 handling), and leaving while a trial
    # thread still runs aborts the interpreter at exit.
    interrupted: KeyboardInterrupt | None = None
    while not all(d.is_set() for d in done):
        try:
            for d in done:
                d.wait(timeout=0.2)
        except KeyboardInterrupt as e:  # the signal; again if sent twice: keep waiting
            interrupted = interrupted or e
            stop.set(e)
    for t in threads:
        t.join()
    if interrupted is not None:
        raise interrupted
    bugs = [e for e in errors if not isinstance(e, KeyboardInterrupt)]
    if bugs:
        raise bugs[0]
    if errors:
        raise errors[0]


class GpuMonitor:
    """The GPU's utilisation (% of time a kernel was running, as NVML reports it),
    sampled once a second while the search runs: through torch (needs pynvml) or
    `nvidia-smi`. `mean()` is None on a CPU or where neither is available."""

    def __init__(self, device: torch.device, every: float = 1.0) -> None:
        self.samples: list[float] = []
        self._read = _utilisation_reader(device)
        self._every = every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nas-gpu-monitor", daemon=True)

    def __enter__(self) -> GpuMonitor:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        assert self._read is not None
        while not self._done.wait(self._every):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def _utilisation_reader(device: torch.device) -> Callable[[], float | None] | None:
    if device.type != "cuda":
        return None
    try:
        torch.cuda.utilization(device)
        return lambda: float(torch.cuda.utilization(device))
    except Exception:  # noqa: BLE001 - pynvml missing or NVML unavailable
        pass
    if shutil.which("nvidia-smi") is None:
        return None
    index = torch.cuda.current_device() if device.index is None else device.index

    def read() -> float | None:
        try:
            return float((nvidia_smi("utilization.gpu") or [])[index])
        except (ValueError, IndexError):
            return None

    return read


def nvidia_smi(field: str, timeout: float = 5) -> list[str] | None:
    """One field per GPU from `nvidia-smi --query-gpu`, or None without an answer."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        return subprocess.run(
            [smi, f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
