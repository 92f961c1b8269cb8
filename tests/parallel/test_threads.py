"""Several trials at once in one process (nas.parallel.threads, nas.search --concurrency).

The results of a search must not depend on what runs beside a trial: the same seed gives
the same architectures the same numbers with K=1 and K=2, exactly on the CPU. Faults with
K running are in test_faults.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import torch

from conftest import TINY, overlapped
from nas.errors import Interrupted, StopFlag
from nas.parallel.threads import GpuMonitor, run_concurrently
from nas.search import main
from nas.training.budget import get_budget

STATE = optuna.trial.TrialState


def _run(tmp_path: Path, k: int, extra: list[str]) -> dict[int, optuna.trial.FrozenTrial]:
    tmp_path.mkdir(exist_ok=True)
    url = f"sqlite:///{tmp_path}/k{k}.db"
    argv = [*TINY, *extra, "--sampler", "random", "--seed", "0", "--trials", "3"]
    assert main([*argv, "--concurrency", str(k), "--study", "s", "--storage", url]) == 0
    return {t.number: t for t in optuna.load_study(study_name="s", storage=url).trials}


def _same_results(tmp_path: Path, extra: list[str], device: str, exact: bool) -> None:
    """exact: every value equal (the CPU); else accuracies within 2 validation images
    (the GPU: cuDNN's backward kernels may sum in another order from run to run, so the
    weights differ in their last bf16 bits and an image near the decision boundary can
    flip; 2 images allows one flip each way, a real difference moves many more)."""
    one, two = _run(tmp_path, 1, extra), _run(tmp_path, 2, extra)
    assert sorted(one) == sorted(two) == list(range(3))
    for n in one:
        a, b = one[n], two[n]
        assert a.state == b.state == STATE.COMPLETE
        assert a.params == b.params  # trial n draws from (seed, n) whatever runs beside it
        assert a.values[1] == b.values[1]  # MACs
        if exact:
            assert a.values == b.values, (n, a.values, b.values)
        else:
            images = get_budget("smoke").val_images
            assert abs(a.values[0] - b.values[0]) * images <= 2 + 1e-9, (n, a.values, b.values)
        if exact and a.user_attrs["trained"] and b.user_attrs["trained"]:
            assert a.user_attrs["final_loss"] == b.user_attrs["final_loss"]
        if b.user_attrs["trained"]:
            assert device in b.user_attrs["device"].lower()
    assert not overlapped(list(one.values()))
    assert overlapped(list(two.values()))  # K=2 really ran trials side by side


@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_same_architectures_same_numbers_with_one_or_two_at_once(
    tmp_path: Path, real_data_dir, augment: str
) -> None:
    """Also with crop-flip: each trial draws its crops and flips from its own generator."""
    _same_results(tmp_path / augment, ["--device", "cpu", "--augment", augment], "cpu", True)
    if augment == "crop-flip":  # the augmentation really ran: other losses than without it
        plain = _run(tmp_path / "none", 1, ["--device", "cpu", "--augment", "none"])
        url = f"sqlite:///{tmp_path / augment}/k1.db"
        crop = optuna.load_study(study_name="s", storage=url).trials
        assert plain[0].params == crop[0].params
        assert plain[0].user_attrs["final_loss"] != crop[0].user_attrs["final_loss"]


@pytest.mark.cuda
@pytest.mark.parametrize("augment", ["none", "crop-flip"])
def test_same_numbers_on_the_gpu_with_graphs_captured_beside_replays(
    tmp_path: Path, real_data_dir, augment: str
) -> None:
    device = torch.cuda.get_device_name().lower()
    _same_results(tmp_path / augment, ["--device", "cuda", "--augment", augment], device, False)


def test_a_failing_body_stops_the_others_and_its_error_is_raised() -> None:
    stop = StopFlag()
    stopped = []

    def body(slot: int) -> None:
        if slot == 0:
            time.sleep(0.05)
            raise ValueError("a bug in trial code")
        while True:  # a trial in training: checks the flag at every step
            try:
                stop.check()
            except KeyboardInterrupt:
                stopped.append(slot)
                raise
            time.sleep(0.01)

    with pytest.raises(ValueError, match="a bug in trial code"):
        run_concurrently(3, torch.device("cpu"), body, stop)
    assert sorted(stopped) == [1, 2]
    assert not [t for t in threading.enumerate() if t.name.startswith("nas-trial-")]


def test_stop_flag_raises_what_the_main_thread_received() -> None:
    stop = StopFlag()
    stop.check()  # not set: nothing
    stop.set(Interrupted(15))
    with pytest.raises(Interrupted) as e:
        stop.check()
    assert e.value.signum == 15
    stop.set(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt) as e2:
        stop.check()
    assert not isinstance(e2.value, Interrupted)


def test_gpu_monitor_reports_nothing_on_a_cpu() -> None:
    with GpuMonitor(torch.device("cpu"), every=0.01) as gpu:
        time.sleep(0.05)
    assert gpu.mean() is None and gpu.samples == []
