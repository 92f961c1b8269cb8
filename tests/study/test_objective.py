"""nas.study.objective: which exceptions cost one trial and which stop the search."""

from __future__ import annotations

import statistics

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


def test_a_noisy_timing_no_longer_rules_a_network_out(monkeypatch, tmp_path) -> None:
    """A CPU latency budget 2.5 ms above a network's quiet figure (measured here first, so
    that a slow or busy host moves both alike) and a timer slowed on purpose by 5 ms in two
    runs of three of every other round: the first round reads over the budget. Timed once,
    as before, the network was ruled out untrained; re-timed, it is judged by its quiet
    round and trained, with its rounds and spread stored."""
    import optuna

    from conftest import TINY, slowed_rounds
    from nas.search import main

    one = [*TINY, "--growth-rate", "8:8", "--convs", "1:1", "--compression", "0.5:0.5:0.25"]
    url = f"sqlite:///{tmp_path}/noisy.db"
    argv = [*one, "--trials", "1", "--device", "cpu", "--storage", url, "--sampler", "random"]
    assert main([*argv, "--study", "quiet"]) == 0
    quiet = optuna.load_study(study_name="quiet", storage=url).trials[0]
    budget = quiet.user_attrs["costs"]["latency_cpu"]["value"] + 2.5
    seen = slowed_rounds(monkeypatch)
    assert main([*argv, "--study", "noisy", "--max-latency-ms", f"{budget:.3f}"]) == 0
    trials = optuna.load_study(study_name="noisy", storage=url).trials
    assert len(seen) >= 2  # the slowed round, then a quiet one
    assert statistics.median(seen[0]) * 1000 > budget  # alone, it would rule the network out
    lat = trials[0].user_attrs["costs"]["latency_cpu"]
    assert trials[0].user_attrs["trained"] and lat["value"] < budget and lat["rounds"] >= 2, lat


def test_a_network_over_the_budget_eager_but_within_it_as_shipped_is_trained(
    monkeypatch, tmp_path
) -> None:
    """The budget is the shipped package's: a network whose eager stand-in reads over a
    CPU latency budget (its eager figure, timed here first, warm; the search's stand-in
    read as twice its figure plus 1 ms on purpose, so that it reads over the budget
    unless the two timings differ by more than 2x, and within the 1 / SHIPPED_FLOOR = 5x
    of it that is worth timing as shipped, whatever the machine does) is timed as shipped
    (its AOTInductor package in a fresh process, untouched: 0.24 to 1.03 x eager,
    benchmarks/shipped_latency.py) and trained, as that figure is within; the constraint
    stored is the shipped figure's. Before, the stand-in ruled it out."""
    from dataclasses import replace

    import optuna

    from nas.arch.space import PRESETS
    from nas.search import main
    from nas.study import objective
    from nas.training.measure import cpu_latency

    def slowed(config, budget_ms=None):  # noqa: ANN001, ANN202 - cpu_latency's own
        m = cpu_latency(config, budget_ms=budget_ms)
        return replace(m, value=2 * m.value + 1.0, fastest=2 * m.fastest + 1.0)

    space = ["--preset", "tiny", "--growth-rate", "16:16", "--convs", "2:2"]
    space += ["--compression", "1:1:0.25", "--budget", "smoke", "--device", "cpu"]
    network = PRESETS["tiny"].config(16, (2, 2, 2), 1.0)
    cpu_latency(network)  # a first timing warms the kernels up (it read 1.5x high in CI)
    budget = round(cpu_latency(network).value, 3)
    monkeypatch.setattr(objective, "cpu_latency", slowed)
    url = f"sqlite:///{tmp_path}/shipped.db"
    argv = [*space, "--trials", "1", "--study", "s", "--storage", url]
    assert main([*argv, "--max-latency-ms", str(budget)]) == 0
    [t] = optuna.load_study(study_name="s", storage=url).trials
    costs = t.user_attrs["costs"]
    eager, shipped = costs["latency_cpu"]["value"], costs["latency_cpu_shipped"]["value"]
    assert eager > budget >= shipped, (eager, budget, shipped)
    assert t.user_attrs["trained"] and t.values[0] > 0
    assert t.constraints["latency_cpu_ms_over_budget"] == shipped - budget, t.constraints
