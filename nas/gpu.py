"""The GPU's lifecycle in one place: streams, CUDA-graph captures, graph memory pools and
giving memory back. Every rule a trial on a GPU follows is here, so it is checked here.

The recipe followed is PyTorch's own (torch/cuda/graphs.py: `torch.cuda.graph` and
`make_graphed_callables`; the "CUDA Graphs" notes): warm up on a side stream that waits on
the caller's stream and is waited on by it, empty the allocator's cache, capture on a
non-default stream into a private memory pool, replay on any stream. Where this module
departs from it, and why (trials run K at a time in threads of one process,
nas.concurrent):

1. No device-wide `torch.cuda.synchronize()` and no emptying of the cache before a
   capture (`graph.__enter__` does both): the warm-up stream is joined to the caller's
   stream instead, so trials beside this one keep their pace (emptying the cache calls
   cudaFree, which waits for the whole device). The cache is emptied, under the capture
   lock, after every trial (nas.objective) and when a capture runs out of memory, which
   is then retried once (nas.step): during a capture the allocator cannot return cached
   blocks on an out-of-memory (its retry is skipped while any capture is under way), so
   blocks other pools keep could make a capture fail although the network fits.
2. `capture_error_mode="thread_local"` instead of "global": other threads go on
   replaying and allocating while one thread captures. Only one capture at a time in a
   process (CAPTURE_LOCK), as the notes require.
3. Streams are made once per (device, trial slot, role) and kept for the life of the
   process (StreamBook), not once per graph: `torch.cuda.Stream()` hands out streams
   round-robin from a pool of 32 per priority (c10/cuda/CUDAStream.h, "Stream pool
   note"), so a stream made per trial comes round to one another live trial is replaying
   on; its capture would then record that trial's work. The book also checks every new
   stream against those it holds, and draws again on a repeat.
4. Each capture gets its own pool from `graph_pool_handle()` (torch.cuda.graph would make
   one inside capture_begin): knowing the id lets `_abandon` end the allocator's routing
   to it when capture_begin or capture_end raises (CUDAGraph::capture_end throws on
   cudaStreamEndCapture's error before its `endAllocateToPool`, which leaves the device
   allocator believing a capture is under way: it would stop processing freed blocks'
   events and skip its out-of-memory retry). The pinned host allocator's routing, which
   newer PyTorch also begins in capture_begin, has no Python binding to end it: after
   such a failure graphs are off for the process anyway (GRAPHS).

A capture that fails for a reason other than memory switches this process to eager
steps for good (`GRAPHS.off`, recorded on each trial as its `step_mode`): a search goes on
slower rather than stopping.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from nas.cli import exception_chain, first_line

__all__ = [
    "CAPTURE_LOCK",
    "GRAPHS",
    "STREAMS",
    "CudaGraphRunner",
    "GraphPolicy",
    "StreamBook",
    "capture_forward",
    "current_slot",
    "is_out_of_memory",
    "out_of_memory",
    "release_memory",
    "slot_stream",
]

T = TypeVar("T")

# One capture at a time in a process: a capture owns the allocator's routing to its pool
# and the CUDA generator's capture state. Emptying the cache takes it too.
CAPTURE_LOCK = threading.Lock()


class StreamBook:
    """Streams made once per (device, slot, role) and held for the life of the process,
    each distinct from every other held (see the module docstring, 3).

    `new_stream(device)` makes a stream (default `torch.cuda.Stream`); a stream is told
    apart by its `cuda_stream` handle. A new stream whose handle the book already holds
    (the pool came round) is dropped and another drawn, up to `tries` times.
    """

    def __init__(
        self, new_stream: Callable[[torch.device], Any] | None = None, tries: int = 64
    ) -> None:
        self._new = new_stream or (lambda device: torch.cuda.Stream(device))
        self._tries = tries
        self._held: dict[tuple[str, int, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, device: torch.device, slot: int, role: str) -> Any:
        key = (str(device), slot, role)
        with self._lock:
            if key not in self._held:
                taken = {s.cuda_stream for s in self._held.values()}
                for _ in range(self._tries):
                    stream = self._new(device)
                    if stream.cuda_stream not in taken:
                        break
                else:
                    raise RuntimeError(
                        f"no free CUDA stream after {self._tries} draws: {len(taken)} are held "
                        "(lower --concurrency)"
                    )
                self._held[key] = stream
            return self._held[key]

    def held(self) -> dict[tuple[str, int, str], Any]:
        with self._lock:
            return dict(self._held)


STREAMS = StreamBook()
_slot = threading.local()


def current_slot() -> int:
    """This thread's trial slot (nas.concurrent), 0 outside one."""
    return getattr(_slot, "value", 0)


@contextmanager
def slot_stream(device: torch.device, slot: int) -> Iterator[None]:
    """Run this thread as trial slot `slot`: on CUDA, on the slot's own stream."""
    saved = getattr(_slot, "value", None)
    _slot.value = slot
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # per thread: a new thread starts on GPU 0
            with torch.cuda.stream(STREAMS.get(device, slot, "trial")):
                yield
        else:
            yield
    finally:
        if saved is None:
            del _slot.value
        else:
            _slot.value = saved


class GraphPolicy:
    """Whether this process still captures CUDA graphs: off for good after a capture that
    failed for a reason other than memory (the reason is kept for step_mode)."""

    def __init__(self) -> None:
        self.off: str | None = None
        self._lock = threading.Lock()

    def turn_off(self, reason: str) -> bool:
        """Record the reason; True if this call turned graphs off (say so once)."""
        with self._lock:
            first = self.off is None
            self.off = self.off or reason
            return first


GRAPHS = GraphPolicy()


def out_of_memory(e: BaseException) -> BaseException | None:
    """The CUDA out-of-memory error anywhere in e's chain, or None (a capture broken by one
    raises its own RuntimeError, "operation failed due to a previous error during
    capture", from it)."""
    for x in exception_chain(e):
        if isinstance(x, torch.OutOfMemoryError) or (
            isinstance(x, RuntimeError) and "CUDA error: out of memory" in str(x)
        ):
            return x
    return None


def is_out_of_memory(e: BaseException) -> bool:
    return out_of_memory(e) is not None


def release_memory(collect: bool = True) -> None:
    """Give cached device memory back to CUDA, under the capture lock (emptying the cache
    while another thread captures would break its capture). `collect` first drops Python
    cycles that may hold tensors (a failed trial's traceback)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        with CAPTURE_LOCK:
            try:
                torch.cuda.empty_cache()
            except RuntimeError as e:  # allocator left mid-capture by a broken capture_end
                GRAPHS.turn_off(f"cannot empty the CUDA cache ({first_line(e)})")


class CudaGraphRunner:
    """One CUDA graph: warm-up and capture on this thread's capture stream, replay on the
    caller's stream. `capture` runs nothing: the caller replays. `reset` drops the graph
    and hands its pool back to the allocator (freed on the next emptying of the cache).

    Tests on the CPU stand in for it with an object of the same methods
    (tests/test_step.py, EmulatedGraph), so the step's control flow runs there too.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.side = STREAMS.get(device, current_slot(), "capture")
        self.graph: torch.cuda.CUDAGraph | None = None
        self.pool: tuple[int, int] | None = None  # set once a capture has ended well

    def _joined(self, fn: Callable[[], T]) -> T:
        """fn() on the side stream, ordered after and before the caller's stream."""
        here = torch.cuda.current_stream(self.device)
        self.side.wait_stream(here)
        with torch.cuda.stream(self.side):
            out = fn()
        here.wait_stream(self.side)
        return out

    def warmup(self, fn: Callable[[], T]) -> T:
        return self._joined(fn)

    def capture(self, fn: Callable[[], T]) -> T:
        """Capture fn() into a new graph with a pool of its own; fn's output tensors are
        the graph's static outputs. Raises fn's error, or capture_end's chained to it."""
        self.reset()
        graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()

        def captured() -> T:
            try:
                graph.capture_begin(pool=pool, capture_error_mode="thread_local")
                out = fn()
                graph.capture_end()
            except BaseException:
                _abandon(graph, self.device, pool)
                raise
            return out

        with CAPTURE_LOCK:  # no emptying of the cache first (module docstring, 1)
            out = self._joined(captured)
        self.graph, self.pool = graph, tuple(pool)
        return out

    def replay(self) -> None:
        assert self.graph is not None, "replay before a capture"
        self.graph.replay()

    def pool_bytes(self) -> int | None:
        """Bytes the allocator holds in this graph's pool; None before a capture."""
        if self.pool is None:
            return None
        return sum(
            seg["total_size"]
            for seg in torch.cuda.memory_snapshot()
            if tuple(seg.get("segment_pool_id", ())) == self.pool
        )

    def reset(self) -> None:
        if self.graph is not None:
            self.graph.reset()
        self.graph, self.pool = None, None


def _abandon(graph: torch.cuda.CUDAGraph, device: torch.device, pool: tuple[int, int]) -> None:
    """After a capture raised: end it if still open, and where capture_end failed before
    its own `endAllocateToPool` (module docstring, 4), end the allocator's routing to
    `pool` and hand the pool back. A capture that did end (`graph.pool()` answers) hands
    its pool back when the graph is dropped, as any graph does."""
    try:
        graph.capture_end()
    except Exception:  # noqa: BLE001 - already ended, or invalidated: the first error is raised
        pass
    try:
        graph.pool()
        return
    except RuntimeError:  # "without a preceding successful capture"
        pass
    index = device.index if device.index is not None else torch.cuda.current_device()
    for name in ("_cuda_endAllocateToPool", "_cuda_releasePool"):
        try:
            getattr(torch._C, name)(index, tuple(pool))
        except (AttributeError, RuntimeError):
            pass


def capture_forward(
    forward: Callable[[], torch.Tensor], device: torch.device, warmup: int = 3
) -> CudaGraphRunner:
    """forward() run eagerly `warmup` times, then captured; replay with `.replay()`."""
    runner = CudaGraphRunner(device)
    for _ in range(warmup):
        runner.warmup(forward)
    runner.capture(forward)
    return runner
