"""nas.study.objective: which exceptions cost one trial and which stop the search."""

from __future__ import annotations

import torch

from nas.study.objective import failure_reason
from nas.training.fit import Diverged


def raised_during_capture(inner: BaseException) -> BaseException:
    """What torch.cuda.graph's exit raises when a capture broke on `inner`."""
    try:
        try:
            raise inner
        except BaseException:
            raise RuntimeError(  # noqa: B904 (as torch raises it: implicitly chained)
                "CUDA error: operation failed due to a previous error during capture"
            )
    except RuntimeError as outer:
        return outer


def test_out_of_memory_in_any_phase_fails_the_trial() -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert failure_reason(oom).startswith("out of GPU memory: CUDA out of memory")
    # raised during graph capture: the capture error carries the OOM as its context
    assert failure_reason(raised_during_capture(oom)).startswith("out of GPU memory: CUDA out")
    cuda_rt = RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ...")
    assert failure_reason(cuda_rt) == "out of GPU memory: CUDA error: out of memory"
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
    )
    assert failure_reason(cpu).startswith("out of memory: DefaultCPUAllocator")


def test_capture_errors_without_oom_and_other_bugs_stop_the_search() -> None:
    assert failure_reason(raised_during_capture(ValueError("a bug"))) is None
    assert failure_reason(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert failure_reason(KeyError("x")) is None


def test_diverged_is_its_own_reason() -> None:
    e = Diverged("training loss became nan at step 100")
    assert failure_reason(e) == "diverged: training loss became nan at step 100"


def test_cpu_latency_beside_gpu_training_is_timed_in_a_thread_of_its_own() -> None:
    """On a GPU run the CPU latency is timed on one core while the trial trains, from
    start() on (after warm-up and capture: nothing runs before): the trial's thread keeps
    its thread count, and the result is the same kind of figure."""
    import threading

    from conftest import small_config
    from nas.study.objective import CpuLatencyTimer

    def timing_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("nas-cpu-latency")]

    before = torch.get_num_threads()
    timer = CpuLatencyTimer(small_config(), torch.device("cuda"))  # only .type is read
    assert not timing_threads()  # not started with the trial
    timer.start()
    assert timing_threads()  # beside the trial, on a thread of its own
    got = timer.result()
    assert torch.get_num_threads() == before
    assert got["unit"] == "ms" and got["value"] > 0 and "1 thread" in got["device"]


def test_cpu_latency_of_a_cpu_run_is_timed_when_asked() -> None:
    from conftest import small_config
    from nas.study.objective import CpuLatencyTimer

    timer = CpuLatencyTimer(small_config(), torch.device("cpu"))
    timer.start()  # nothing beside training on a CPU: training takes the cores
    assert timer._timing is None
    assert timer.result()["unit"] == "ms"
