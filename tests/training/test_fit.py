"""nas.training.fit: the short-run loop on the CPU (tiny synthetic files and real data)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import EmulatedGraph, small_config
from nas.arch.model import build_model
from nas.data.dataset import load_fashion_mnist
from nas.training import gpu
from nas.training.budget import get_budget
from nas.training.fit import Diverged, pick_device, recalibrate_bn, train_and_evaluate
from nas.training.step import WARMUP_STEPS, device_batch

SMALL = small_config(image_size=28)


def test_tiny_run_reports_consistent_numbers(tiny_data_dir) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=64, batch_size=16, val_images=20)
    r = train_and_evaluate(SMALL, b, d.train, d.val)
    assert r.steps == 4 and r.train_images == 64 and r.eval_images == 20
    assert 0.0 <= r.accuracy <= 1.0 and (r.accuracy * 20) == round(r.accuracy * 20)
    assert r.train_seconds > 0 and r.images_per_second == pytest.approx(64 / r.train_seconds)
    assert r.device.startswith("cpu")


def test_same_seed_same_result_other_seed_other_result(tiny_data_dir) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=64, batch_size=16, val_images=20)
    runs = [train_and_evaluate(SMALL, b.with_seed(s), d.train, d.val) for s in (0, 0, 1)]
    assert runs[0].final_loss == runs[1].final_loss
    assert runs[0].final_loss != runs[2].final_loss


def test_smoke_budget_learns_real_fashion_mnist(real_data) -> None:
    d = real_data
    r = train_and_evaluate(SMALL, get_budget("smoke"), d.train, d.val)
    # 16 steps of 32 images: far from converged, but well above chance (0.10)
    assert r.accuracy > 0.25, r  # chance is 0.10 (+-0.013 on 500 images)


def test_diverging_run_raises(tiny_data_dir) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=64, batch_size=16, val_images=20)
    # A NaN in the weights makes every loss NaN: the run must say so, not score garbage.
    model = build_model(SMALL)
    with torch.no_grad():
        model.head[-1].weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match="nan"):
        train_and_evaluate(SMALL, b, d.train, d.val, model=model)


def test_pick_device() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")


@pytest.mark.parametrize("steps", [2, WARMUP_STEPS, WARMUP_STEPS + 2])
def test_a_graphed_run_of_any_length_reads_a_pool_only_after_a_capture(
    tiny_data_dir, monkeypatch, steps: int
) -> None:
    """A run of no more steps than the warm-up never captures: its memory is unknown (the
    stand-in, like CUDAGraph.pool(), raises if asked), and it trains as eagerly as it is."""
    monkeypatch.setattr(gpu.GRAPHS, "off", None)
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=16 * steps, batch_size=16, val_images=20)
    eager = train_and_evaluate(SMALL, b, d.train, d.val)
    graph = EmulatedGraph()
    r = train_and_evaluate(SMALL, b, d.train, d.val, cuda_graph=True, runner=graph)
    assert r.steps == steps and r.final_loss == eager.final_loss
    assert r.accuracy == eager.accuracy
    if steps <= WARMUP_STEPS:
        assert "capture" not in graph.events and r.step_memory_bytes is None
        assert r.step_mode.startswith("eager: the run ended within")
    else:
        assert r.step_mode == "cuda-graph" and r.step_memory_bytes is not None
    assert graph.events[-1] == "reset"  # the graph dropped at the end of the run


def test_on_warm_is_called_once_after_the_capture(tiny_data_dir, monkeypatch) -> None:
    """The CPU latency timing starts at on_warm: after model build, warm-up and capture."""
    monkeypatch.setattr(gpu.GRAPHS, "off", None)
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=96, batch_size=16, val_images=20)
    graph = EmulatedGraph()
    train_and_evaluate(
        SMALL,
        b,
        d.train,
        d.val,
        cuda_graph=True,
        runner=graph,
        on_warm=lambda: graph.events.append("warm"),
    )
    assert graph.events.count("warm") == 1
    assert graph.events.index("warm") > graph.events.index("capture")


def test_bn_recalibration_with_float_momenta_is_the_exact_cumulative_average() -> None:
    """momentum 1/(j+1) per batch, a Python float, equals BatchNorm's momentum=None (which
    reads 1/num_batches_tracked off the device, every layer, every batch) bit for bit, in
    float64; a constant momentum, as a slip would leave it, does not."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (96, 28, 28), dtype=torch.uint8)

    def stats(momentum: float | str | None) -> list[torch.Tensor]:
        model = build_model(SMALL, seed=0).double()
        if momentum == "ours":
            recalibrate_bn(model, SMALL, x, 16)
        else:
            for bn in model.modules():
                if isinstance(bn, torch.nn.BatchNorm2d):
                    bn.reset_running_stats()
                    bn.momentum = momentum
            model.train()
            with torch.no_grad():
                for i in range(0, 96, 16):
                    model(device_batch(x[i : i + 16], SMALL.image_size, torch.float64))
        return [b for name, b in model.named_buffers() if "running" in name]

    ours, exact, constant = stats("ours"), stats(None), stats(0.1)
    assert all(torch.equal(a, b) for a, b in zip(ours, exact))
    assert not all(torch.equal(a, b) for a, b in zip(ours, constant))
