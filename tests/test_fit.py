"""nas.fit: the short-run loop on the CPU (tiny synthetic files and real data)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import small_config
from nas.budget import get_budget
from nas.data import load_fashion_mnist
from nas.fit import Diverged, pick_device, train_and_evaluate
from nas.model import build_model

SMALL = small_config(image_size=28)


def test_tiny_run_reports_consistent_numbers(tiny_data_dir) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=64, batch_size=16, val_images=20)
    r = train_and_evaluate(SMALL, b, d.train_x, d.train_y, d.val_x, d.val_y)
    assert r.steps == 4 and r.train_images == 64 and r.eval_images == 20
    assert 0.0 <= r.accuracy <= 1.0 and (r.accuracy * 20) == round(r.accuracy * 20)
    assert r.train_seconds > 0 and r.images_per_second == pytest.approx(64 / r.train_seconds)
    assert r.device.startswith("cpu")


def test_same_seed_same_result_other_seed_other_result(tiny_data_dir) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    b = replace(get_budget("smoke"), train_images=64, batch_size=16, val_images=20)
    runs = [
        train_and_evaluate(SMALL, b.with_seed(s), d.train_x, d.train_y, d.val_x, d.val_y)
        for s in (0, 0, 1)
    ]
    assert runs[0].final_loss == runs[1].final_loss
    assert runs[0].final_loss != runs[2].final_loss


def test_smoke_budget_learns_real_fashion_mnist(real_data) -> None:
    d = real_data
    r = train_and_evaluate(SMALL, get_budget("smoke"), d.train_x, d.train_y, d.val_x, d.val_y)
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
        train_and_evaluate(SMALL, b, d.train_x, d.train_y, d.val_x, d.val_y, model=model)


def test_pick_device() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
