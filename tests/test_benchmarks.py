"""benchmarks/: the throughput script runs end to end at its tiny CPU setting (nothing timed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_tiny(tmp_path: Path, real_data_dir) -> None:
    out = tmp_path / "t.json"
    assert load("throughput").main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    loops = r["a_b_loops"]
    assert set(loops) == {"d2l_style_loop", "ours_eager"}  # no CUDA graph on the CPU
    for run in loops.values():
        assert (
            run["images"] == 256 and run["reps"] == 3 and len(run["images_per_second_runs"]) == 3
        )
        assert run["images_per_second"] == sorted(run["images_per_second_runs"])[1]  # median
    assert [c["workers"] for c in r["c_search"]] == [1, 2]
    assert all(c["trials"] == 2 for c in r["c_search"])
    parts = r["c_search"][0]["median_parts_seconds"]
    assert {"sample", "cost_and_attrs", "warmup", "steady_train", "eval"} <= set(parts)
    assert r["d_cpu_side"]["median_seconds"]["fvcore"] > 0
