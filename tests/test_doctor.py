"""nas.doctor: the checks a user runs first; on the CPU here, all of them on a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from nas import doctor


def test_on_a_cpu_the_cpu_checks_pass_and_the_gpu_checks_are_named_as_skipped(
    real_data_dir, capsys
) -> None:
    assert doctor.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    status = {line.split("  ")[1].split(":")[0]: line.split()[0] for line in out[:-1]}
    assert status == {
        "environment": "PASS",
        "data": "PASS",
        "SGD equals torch.optim.SGD (float64)": "PASS",
        "graph step equals eager step": "SKIP",
        "a run of 2 steps": "PASS",
        "40 trials at K=2": "SKIP",
        "latency": "PASS",
        "graph vs eager images/s": "SKIP",
    }
    assert out[-1].startswith("5 of 5 checks passed; skipped (no GPU): graph step equals")


def test_json_for_scripts_and_a_failed_check_exits_1(tmp_path, capsys) -> None:
    assert doctor.main(["--device", "cpu", "--json", "--data-dir", str(tmp_path / "none")]) == 1
    report = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["data"]["status"] == "FAIL" and "does not exist" in by_name["data"]["figure"]
    assert by_name["a run of 2 steps"] == {
        "name": "a run of 2 steps",
        "status": "FAIL",
        "figure": "no data (see the data check)",
        "seconds": by_name["a run of 2 steps"]["seconds"],
    }
    assert by_name["SGD equals torch.optim.SGD (float64)"]["status"] == "PASS"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")
def test_asking_for_a_gpu_without_one_is_one_line(capsys) -> None:
    assert doctor.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "nas.doctor: error: --device cuda was asked for, but PyTorch sees no CUDA GPU here"
    ]


# -- on a GPU: the checks that catch the defects of the CUDA-graph path ----------------------


@pytest.mark.cuda
def test_forty_trials_at_k2_share_no_stream_and_hold_memory_flat(real_data) -> None:
    """More trials than PyTorch's pool of 32 streams, two at a time, each capturing a step
    and timing a latency: none fails, every stream distinct, live memory flat,
    reserved memory at most the release threshold over it."""
    ok, figure = doctor._trials_at_k2(real_data.to("cuda"))
    assert ok, figure


@pytest.mark.cuda
def test_a_run_shorter_than_the_warm_up_on_a_gpu(real_data) -> None:
    ok, figure = doctor._two_steps(real_data.to("cuda"))
    assert ok, figure


@pytest.mark.cuda
def test_graph_replays_equal_eager_steps_within_one_bf16_rounding(real_data) -> None:
    ok, figure = doctor._graph_step(real_data.to("cuda"))
    assert ok, figure
