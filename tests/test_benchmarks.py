"""benchmarks/: the throughput script runs end to end at its tiny CPU setting (nothing timed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_tiny(tmp_path: Path, real_data_dir, capsys) -> None:
    out, results = tmp_path / "t.json", tmp_path / "t.jsonl"
    argv = ["--tiny", "--device", "cpu", "--results", str(results)]
    assert load("throughput").main([*argv, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    loops = r["a_b_loops"]
    assert set(loops) == {"d2l_style_loop", "ours_eager"}  # no CUDA graph on the CPU
    for run in loops.values():
        assert run["images"] == 64 and run["reps"] == 3 and len(run["images_per_second_runs"]) == 3
        assert run["images_per_second"] == sorted(run["images_per_second_runs"])[1]  # median
    assert [(c["preset"], c["concurrency"]) for c in r["c_search"]] == [("cifar", 1), ("cifar", 2)]
    assert all(c["trials"] == 2 and c["failed"] == 0 for c in r["c_search"])
    parts = r["c_search"][0]["median_parts_seconds"]
    assert {"sample", "cost_and_attrs", "warmup", "steady_train", "eval"} <= set(parts)
    [compare] = r["c_compare"].values()  # the same architectures, alone and two at once
    assert compare["architectures"] >= 2 and compare["identical"] == compare["architectures"]
    assert r["d_cpu_side"]["median_seconds"]["fvcore"] > 0
    # resumable: the finished searches are read back, not run again
    lines = results.read_text().splitlines()
    capsys.readouterr()
    assert load("throughput").main([*argv, "--parts", "c"]) == 0
    assert results.read_text().splitlines() == lines
    assert "study 'bench'" not in capsys.readouterr().out  # no search started


def test_fidelity_tiny_resumes_and_analyses(tmp_path: Path, real_data_dir, capsys) -> None:
    """fidelity.py at its tiny CPU setting: every run a JSON line, a second run trains
    nothing, the analysis names each signal with an interval (nothing timed or ranked)."""
    fidelity = load("fidelity")
    results, out = tmp_path / "f.jsonl", tmp_path / "f.json"
    argv = ["--tiny", "--preset", "cifar", "--device", "cpu", "--results", str(results)]
    assert fidelity.main([*argv, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 3 * 3 + 1 * 2 * 2  # 3 archs x 3 budgets, 1 arch x 2 seeds x 2
    assert {r["budget"] for r in rows} == {"short", "long", "final"}
    assert fidelity.main(argv) == 0
    assert "13 of 13 runs done before, 0 to go" in capsys.readouterr().out
    assert len(results.read_text().splitlines()) == 13
    analysis = json.loads(out.read_text())
    assert analysis["architectures"] == 3
    signals = analysis["signals"]
    assert {"short accuracy", "long accuracy", "-MACs", "params"} <= set(signals)
    for s in signals.values():
        # tau is undefined (nan) where one side is all ties: 3 tiny runs scored on 100
        # images can tie; otherwise it and its interval lie in [-1, 1]
        lo, hi = s["kendall_tau_95"]
        assert math.isnan(s["kendall_tau"]) or -1 <= s["kendall_tau"] <= 1
        assert (math.isnan(lo) and math.isnan(hi)) or -1 <= lo <= hi <= 1
    assert len(analysis["seed_noise"]["final"]["seed_stdev"]) == 1
    assert out.with_suffix(".html").read_text().count("Plotly.newPlot") == 1


def test_rank_statistics_against_known_values() -> None:
    """Kendall tau-b and Spearman rho (nas.front) on hand-checked cases, ties included."""
    import nas.front as fidelity

    assert fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert fidelity.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped pair of 6: (5 - 1) / 6
    assert abs(fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) - 4 / 6) < 1e-12
    # tau-b with a tie in y: C=5, D=0, ties_y=1 -> 5 / sqrt(6 * 5)
    assert abs(fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 3, 3]) - 5 / 30**0.5) < 1e-12
    assert fidelity.ranks([10, 30, 20, 20]) == [1.0, 4.0, 2.5, 2.5]
    assert abs(fidelity.spearman_rho([1, 2, 3, 4], [1, 2, 4, 3]) - 0.8) < 1e-12
    assert load("fidelity").top_quarter_overlap([4, 3, 2, 1], [4, 3, 2, 1]) == 1.0


def test_latency_tiny(tmp_path: Path, real_data_dir) -> None:
    """latency.py at its CI setting: two measurements per network, a real study's rank
    agreement between MACs and CPU latency (nothing judged: 3 networks rank nothing)."""
    out = tmp_path / "l.json"
    assert load("latency").main(["--tiny", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [s["networks"] for s in r["a_stability"]] == [2, 2]
    for s in r["a_stability"]:
        for row in s["rows"]:
            assert len(row["ms"]) == 2 and all(v > 0 for v in row["ms"])
            assert row["relative_difference"] == abs(row["ms"][0] - row["ms"][1]) / (
                sum(row["ms"]) / 2
            )
    for part in (r["b_study"], r["c_untrained"]):
        assert part["networks"] >= 2
        rho = part["macs_vs_latency"]["spearman_rho"]
        assert math.isnan(rho) or -1 <= rho <= 1
