"""The GPU's lifecycle in one place: streams, CUDA-graph captures, graph memory pools and
giving memory back. Every rule a trial on a GPU follows is here, so it is checked here.

The recipe followed is PyTorch's own (torch/cuda/graphs.py: `torch.cuda.graph` and
`make_graphed_callables`; the "CUDA Graphs" notes): warm up on a side stream that waits on
the caller's stream and is waited on by it, empty the allocator's cache, capture on a
non-default stream into a private memory pool, replay on any stream. Where this module
departs from it, and why (trials run K at a time in threads of one process,
nas.parallel.threads):

1. No device-wide `torch.cuda.synchronize()` and no emptying of the cache before a
   capture (`graph.__enter__` does both): the warm-up stream is joined to the caller's
   stream instead, so trials beside this one keep their pace (emptying the cache calls
   cudaFree, which waits for the whole device). The cache is emptied, under the capture
   lock, only when it is needed: when a capture runs out of memory, which is then
   retried once (nas.training.step; during a capture the allocator cannot return cached blocks on
   an out-of-memory, its retry being skipped while any capture is under way, so blocks
   other pools keep could make a capture fail although the network fits), and after a
   trial whose end leaves more than RELEASE_BYTES of the cache unused (release_if_large,
   nas.study.objective): a finished trial's graph pool stays cached until then.
2. `capture_error_mode="thread_local"` instead of "global": other threads go on
   allocating while one thread captures. Only one capture at a time in a process
   (GRAPH_LOCK), as the notes require. Replays beside a capture depend on the installed
   PyTorch (GRAPH_LOCK.exclusive, named by nas.doctor). Before 2.13 a capture marks the
   default CUDA generator itself as capturing (CUDAGeneratorState::capture_prologue sets
   its `capturing_` flag, capture_epilogue clears it) and every replay, of any graph,
   checks that flag through replay_prologue -> increase(), so a replay on another thread
   during a capture raises "Offset increment outside graph capture encountered
   unexpectedly" (pytorch issue #172390). 2.13 keeps that state per capture (PR #176752,
   `CUDAGeneratorCaptureState`). Where the flag is per generator, replays and the
   dropping of a graph (whose destructor unregisters it from the generator's unlocked
   set of graphs) wait for a capture and hold it off: a replay is one launch of
   microseconds. A capture that fails after capture_prologue (cudaStreamEndCapture's
   error, or an error inside the capture) never reaches capture_epilogue and leaves the
   flag set for good, so every later replay in the process would raise: a one-kernel
   capture is then made and ended, whose prologue and epilogue clear it (_clear_rng_flag).
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
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from nas.errors import exception_chain, first_line

__all__ = [
    "GRAPHS",
    "GRAPH_LOCK",
    "STREAMS",
    "CudaGraphRunner",
    "GraphLock",
    "GraphPolicy",
    "StreamBook",
    "capture_forward",
    "clear_rng_flag",
    "current_slot",
    "is_out_of_memory",
    "out_of_memory",
    "release_if_large",
    "release_memory",
    "release_threshold",
    "should_release",
    "rng_flag_per_generator",
    "slot_stream",
]

T = TypeVar("T")


def rng_flag_per_generator(version: str | None = None, header: str | None = None) -> bool:
    """Whether this PyTorch marks the CUDA generator itself as capturing during a capture
    (module docstring, 2): read from the installed ATen header where the wheel ships it
    (`CUDAGeneratorCaptureState` declared: per capture), else from the version (per
    capture from 2.13 on; 2.12 is treated as per generator, unverified)."""
    if header is None and version is None:
        path = Path(torch.__file__).parent / "include/ATen/cuda/CUDAGeneratorImpl.h"
        header = path.read_text(errors="replace") if path.is_file() else None
    if header is not None:
        return "CUDAGeneratorCaptureState" not in header
    major, minor = (int(x) for x in re.findall(r"\d+", version or torch.__version__)[:2])
    return (major, minor) < (2, 13)


class GraphLock:
    """Captures one at a time in a process (a capture owns the allocator's routing to its
    pool; emptying the cache takes the lock too). With `exclusive`, replays and the
    dropping of graphs wait for a capture as well (module docstring, 2)."""

    def __init__(self, exclusive: bool) -> None:
        self.exclusive = exclusive
        self._lock = threading.Lock()

    def capture(self) -> threading.Lock:
        return self._lock

    @contextmanager
    def replay(self) -> Iterator[None]:
        if self.exclusive:
            with self._lock:
                yield
        else:
            yield

    def describe(self) -> str:
        if self.exclusive:
            return (
                f"torch {torch.__version__} marks the CUDA generator as capturing: "
                "replays wait for captures"
            )
        return (
            f"torch {torch.__version__} keeps RNG capture state per capture: replays run "
            "beside captures"
        )


GRAPH_LOCK = GraphLock(exclusive=rng_flag_per_generator())


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
    """This thread's trial slot (nas.parallel.threads), 0 outside one."""
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
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        if collect:
            gc.collect()
        return
    with GRAPH_LOCK.capture():  # the collection may drop graphs (module docstring, 2)
        if collect:
            gc.collect()
        try:
            torch.cuda.empty_cache()
        except RuntimeError as e:  # allocator left mid-capture by a broken capture_end
            GRAPHS.turn_off(f"cannot empty the CUDA cache ({first_line(e)})")


# After a trial: empty the cache only when its unused blocks exceed this many bytes
# (emptying calls cudaFree, which waits for the whole device, the other trials too). A
# finished trial's graph pool stays cached until then; a capture that runs out of memory
# empties the cache itself (nas.training.step), and eager allocations do (the allocator's retry).
RELEASE_BYTES = 2 * 2**30  # or an eighth of the device, whichever is less


def release_threshold(total: int) -> int:
    return min(RELEASE_BYTES, total // 8)


def should_release(reserved: int, allocated: int, total: int) -> bool:
    """Whether a cache holding `reserved - allocated` unused bytes is worth emptying."""
    return reserved - allocated > release_threshold(total)


def release_if_large(device: torch.device) -> bool:
    """After a trial: give cached memory back only past release_threshold. True if it did."""
    if device.type != "cuda" or not torch.cuda.is_initialized():
        return False
    total = torch.cuda.get_device_properties(device).total_memory
    reserved = torch.cuda.memory_reserved(device)
    if not should_release(reserved, torch.cuda.memory_allocated(device), total):
        return False
    release_memory(collect=False)
    return True


class CudaGraphRunner:
    """One CUDA graph: warm-up and capture on this thread's capture stream, replay on the
    caller's stream. `capture` runs nothing: the caller replays. `reset` drops the graph
    and hands its pool back to the allocator (freed on the next emptying of the cache).

    Tests on the CPU stand in for it with an object of the same methods
    (tests/training/test_step.py, EmulatedGraph), so the step's control flow runs there too.
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
                if GRAPH_LOCK.exclusive:
                    clear_rng_flag(self._clear_rng_flag)
                raise
            return out

        with GRAPH_LOCK.capture():  # no emptying of the cache first (module docstring, 1)
            out = self._joined(captured)
        self.graph, self.pool = graph, tuple(pool)
        return out

    def _clear_rng_flag(self) -> None:
        """A one-kernel capture on the capture stream: its capture_begin's prologue and
        capture_end's epilogue clear the generator's capturing flag (module docstring, 2).
        Called with the capture lock held, on the capture stream."""
        x = torch.zeros(1, device=self.device)  # on the capture stream, outside any capture
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(capture_error_mode="thread_local")
        x.add_(1)
        graph.capture_end()
        graph.reset()
        del graph

    def replay(self) -> None:
        assert self.graph is not None, "replay before a capture"
        with GRAPH_LOCK.replay():
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
        with GRAPH_LOCK.replay():  # the graph's destructor runs here (module docstring, 2)
            if self.graph is not None:
                self.graph.reset()
            self.graph, self.pool = None, None


def clear_rng_flag(clear: Callable[[], None]) -> None:
    """After a failed capture where the flag is per generator: run `clear` (a one-kernel
    capture); if even that fails, graphs go off for the process with the reason."""
    try:
        clear()
    except Exception as e:  # noqa: BLE001 - recorded as the reason graphs went off
        GRAPHS.turn_off(f"the CUDA generator stayed marked as capturing ({first_line(e)})")


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
