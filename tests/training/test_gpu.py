"""nas.training.gpu: the bookkeeping of streams, graph policy and memory errors, on the CPU.

The CUDA side (captures, pools, memory given back) runs in the CUDA tests and nas.doctor.
Here a stand-in for `torch.cuda.Stream` models PyTorch's stream pool: 32 streams handed
out round-robin (c10/cuda/CUDAStream.h, "Stream pool note").
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
import torch

from nas.training import gpu
from nas.training.gpu import (
    CudaGraphRunner,
    GraphLock,
    GraphPolicy,
    StreamBook,
    clear_rng_flag,
    current_slot,
    is_out_of_memory,
    release_threshold,
    rng_flag_per_generator,
    should_release,
    slot_stream,
)

POOL_SIZE = 32
CUDA = torch.device("cuda:0")  # only named: no stream of the stand-in touches a GPU


class PooledStream:
    def __init__(self, handle: int) -> None:
        self.cuda_stream = handle


class StreamPool:
    """torch.cuda.Stream's round-robin over a pool of 32, as c10 hands them out."""

    def __init__(self) -> None:
        self._next = itertools.cycle(range(1, POOL_SIZE + 1))

    def __call__(self, device: torch.device) -> PooledStream:
        return PooledStream(next(self._next))


def captures_at_k2(trial_stream, capture_stream) -> list[tuple[int, int]]:  # noqa: ANN001
    """40 trials, two at a time (slots 0 and 1): each slot's thread takes its trial stream
    once, `trial_stream(pool, slot)`, then each trial takes a capture stream,
    `capture_stream(pool, slot)`, and the trial's latency timing draws one more from
    the pool, as nas.training.measure did. Returns (capture stream, the other slot's trial
    stream) per trial."""
    pool = StreamPool()
    live = {slot: trial_stream(pool, slot) for slot in (0, 1)}
    seen = []
    for n in range(40):
        slot = n % 2
        capture = capture_stream(pool, slot)
        seen.append((capture.cuda_stream, live[1 - slot].cuda_stream))
        pool(CUDA)  # the latency timing's stream
    return seen


def test_a_capture_stream_made_per_trial_comes_round_to_a_live_trials_stream() -> None:
    """The defect: a new capture stream per trial from a pool of 32 is, within 40 trials at
    K=2, the stream another trial is replaying on, so its capture would record that
    trial's work."""
    seen = captures_at_k2(lambda pool, slot: pool(CUDA), lambda pool, slot: pool(CUDA))
    assert any(capture == other for capture, other in seen)


def test_the_book_keeps_one_stream_per_slot_and_role_all_distinct() -> None:
    books: dict[int, StreamBook] = {}

    def book_of(pool: StreamPool) -> StreamBook:
        return books.setdefault(id(pool), StreamBook(pool))

    seen = captures_at_k2(
        lambda pool, slot: book_of(pool).get(CUDA, slot, "trial"),
        lambda pool, slot: book_of(pool).get(CUDA, slot, "capture"),
    )
    assert not any(capture == other for capture, other in seen)
    (book,) = books.values()
    handles = [s.cuda_stream for s in book.held().values()]
    assert len(handles) == 4 and len(set(handles)) == 4  # 2 slots x (trial, capture)


def test_the_book_draws_again_when_the_pool_repeats_a_held_stream() -> None:
    pool = StreamPool()
    book = StreamBook(pool)
    first = book.get(CUDA, 0, "trial")
    for _ in range(POOL_SIZE - 1):
        pool(CUDA)  # others draw until the pool comes round to `first` again
    second = book.get(CUDA, 1, "trial")
    assert second.cuda_stream != first.cuda_stream


def test_more_streams_than_the_pool_holds_is_refused_in_one_line() -> None:
    book = StreamBook(StreamPool())
    for slot in range(POOL_SIZE):
        book.get(CUDA, slot, "trial")
    with pytest.raises(RuntimeError, match="no free CUDA stream.*lower --concurrency"):
        book.get(CUDA, POOL_SIZE, "trial")


def test_slot_stream_names_the_slot_and_restores_it() -> None:
    assert current_slot() == 0
    with slot_stream(torch.device("cpu"), 3):
        assert current_slot() == 3
        with slot_stream(torch.device("cpu"), 5):
            assert current_slot() == 5
        assert current_slot() == 3
    assert current_slot() == 0


def test_graphs_are_turned_off_once_and_keep_the_first_reason() -> None:
    policy = GraphPolicy()
    assert policy.off is None
    assert policy.turn_off("capture failed: A") is True
    assert policy.turn_off("capture failed: B") is False
    assert policy.off == "capture failed: A"


def test_out_of_memory_is_found_anywhere_in_the_chain() -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    try:
        try:
            raise oom
        except torch.OutOfMemoryError:
            raise RuntimeError("operation failed due to a previous error during capture")  # noqa: B904
    except RuntimeError as e:
        assert is_out_of_memory(e)
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("operation not permitted when stream is capturing"))


# --- Replays beside a capture: a CPU model of the CUDA generator's rule before 2.13 ---
# (aten/src/ATen/cuda/CUDAGeneratorImpl.cpp and CUDAGraph.cpp: capture_begin's
# capture_prologue sets the default generator's `capturing_` flag, capture_end's
# capture_epilogue clears it after cudaStreamEndCapture succeeded, and every replay's
# replay_prologue -> increase() raises while it is set.)

OFFSET_ERROR = "Offset increment outside graph capture encountered unexpectedly."


class Generator211:
    capturing = False


class Graph211:
    def __init__(self, gen: Generator211, end_fails: bool = False) -> None:
        self.gen, self.end_fails = gen, end_fails

    def capture(self, body) -> None:  # noqa: ANN001
        self.gen.capturing = True  # capture_prologue
        body()
        if self.end_fails:  # cudaStreamEndCapture's error: capture_epilogue never runs
            raise RuntimeError("CUDA error: operation failed due to a previous error in capture")
        self.gen.capturing = False  # capture_epilogue

    def replay(self) -> None:
        if self.gen.capturing:
            raise RuntimeError(OFFSET_ERROR)


def replay_during_a_capture(lock: GraphLock) -> list[str]:
    """One thread captures (holding it open until the other has tried to replay, or 0.3 s
    after); the other replays a graph captured before. Returns the replay's errors."""
    gen = Generator211()
    done = Graph211(gen)
    done.capture(lambda: None)
    trying, errors = threading.Event(), []

    def capture() -> None:
        with lock.capture():
            Graph211(gen).capture(lambda: (trying.wait(5), time.sleep(0.3)))

    def replay() -> None:
        trying.set()
        try:
            with lock.replay():
                done.replay()
        except RuntimeError as e:
            errors.append(str(e))

    a = threading.Thread(target=capture)
    a.start()
    while not gen.capturing:
        time.sleep(0.001)
    b = threading.Thread(target=replay)
    b.start()
    a.join(10)
    b.join(10)
    return errors


def test_a_replay_beside_a_capture_raises_unless_replays_wait_for_captures() -> None:
    assert replay_during_a_capture(GraphLock(exclusive=False)) == [OFFSET_ERROR]
    assert replay_during_a_capture(GraphLock(exclusive=True)) == []


def test_a_failed_capture_end_leaves_the_flag_set_until_a_capture_clears_it(monkeypatch) -> None:
    gen = Generator211()
    done = Graph211(gen)
    done.capture(lambda: None)
    with pytest.raises(RuntimeError, match="previous error in capture"):
        Graph211(gen, end_fails=True).capture(lambda: None)
    with pytest.raises(RuntimeError, match="Offset increment"):
        done.replay()  # every later replay in the process, without the clearing capture
    policy = GraphPolicy()
    monkeypatch.setattr(gpu, "GRAPHS", policy)
    clear_rng_flag(lambda: Graph211(gen).capture(lambda: None))
    done.replay()
    assert policy.off is None

    def broken() -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    clear_rng_flag(broken)
    assert policy.off is not None and "stayed marked as capturing" in policy.off


@pytest.mark.parametrize("exclusive", [True, False])
def test_the_runner_replays_and_drops_its_graph_under_the_lock_where_needed(
    monkeypatch, exclusive: bool
) -> None:
    lock = GraphLock(exclusive)
    monkeypatch.setattr(gpu, "GRAPH_LOCK", lock)
    held: list[bool] = []

    class Recorder:
        def replay(self) -> None:
            held.append(lock.capture().locked())

        def reset(self) -> None:
            held.append(lock.capture().locked())

    runner = object.__new__(CudaGraphRunner)  # no CUDA stream: only the graph is used
    runner.graph, runner.pool = Recorder(), None
    runner.replay()
    runner.reset()
    assert held == [exclusive, exclusive] and runner.graph is None


def test_which_pytorch_marks_the_generator_as_capturing() -> None:
    per_capture = "struct CUDAGeneratorCaptureState : public c10::intrusive_ptr_target {"
    per_generator = "struct CUDAGeneratorState { bool capturing_{}; };"
    assert rng_flag_per_generator(header=per_generator)
    assert not rng_flag_per_generator(header=per_capture)
    assert rng_flag_per_generator(version="2.11.0")
    assert rng_flag_per_generator(version="2.12.1+cu130")
    assert not rng_flag_per_generator(version="2.13.0+cpu")
    assert not rng_flag_per_generator(version="2.14.0.dev20261201")
    # the installed PyTorch: its own header, where the wheel ships it, agrees with its version
    header = Path(torch.__file__).parent / "include/ATen/cuda/CUDAGeneratorImpl.h"
    if header.is_file():
        assert rng_flag_per_generator() == rng_flag_per_generator(version=torch.__version__)


def test_the_cache_is_emptied_after_a_trial_only_past_the_threshold() -> None:
    h200 = 141 * 10**9
    assert release_threshold(h200) == 2 * 2**30
    assert release_threshold(8 * 2**30) == 2**30  # an eighth of a small card
    assert not should_release(reserved=3 * 2**30, allocated=2 * 2**30, total=h200)
    assert should_release(reserved=5 * 2**30, allocated=2 * 2**30, total=h200)
