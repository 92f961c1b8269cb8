"""nas.gpu: the bookkeeping of streams, graph policy and memory errors, on the CPU.

The CUDA side (captures, pools, memory given back) runs in the CUDA tests and nas.doctor.
Here a stand-in for `torch.cuda.Stream` models PyTorch's stream pool: 32 streams handed
out round-robin (c10/cuda/CUDAStream.h, "Stream pool note").
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nas.gpu import GraphPolicy, StreamBook, current_slot, is_out_of_memory, slot_stream

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
    the pool, as nas.measure did. Returns (capture stream, the other slot's trial
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
