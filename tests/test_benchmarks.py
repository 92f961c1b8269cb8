"""benchmarks/: the throughput script runs end to end at its tiny CPU setting (nothing timed)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_tiny(tmp_path: Path, real_data_dir, capfd) -> None:
    out, results = tmp_path / "t.json", tmp_path / "t.jsonl"
    argv = ["--tiny", "--device", "cpu", "--results", str(results), "--repeats", "2"]
    assert load("throughput").main([*argv, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    loops = r["a_b_loops"]
    assert set(loops) == {"d2l_style_loop", "ours_eager"}  # no CUDA graph on the CPU
    for run in loops.values():
        assert run["images"] == 64 and run["reps"] == 3 and len(run["images_per_second_runs"]) == 3
        assert run["images_per_second"] == sorted(run["images_per_second_runs"])[1]  # median
    assert [(c["preset"], c["concurrency"]) for c in r["c_search"]] == [("cifar", 1), ("cifar", 2)]
    assert all(c["trials"] == 2 and c["failed"] == 0 for c in r["c_search"])
    assert all(c["repeats"] == 2 for c in r["c_search"])
    assert all(len(c["trials_per_minute_repeats"]) == 2 for c in r["c_search"])
    # each search a fresh process, K=1 and K=2 in alternating order after one warm-up
    lines = results.read_text().splitlines()
    assert [(json.loads(x)["repeat"], json.loads(x)["concurrency"]) for x in lines] == [
        (0, 1),
        (0, 2),
        (1, 2),
        (1, 1),
    ]
    assert capfd.readouterr().out.count("untimed warm-up search") == 1
    parts = r["c_search"][0]["median_parts_seconds"]
    assert {"sample", "cost_and_attrs", "warmup", "steady_train", "eval"} <= set(parts)
    [compare] = r["c_compare"].values()  # the same architectures, alone and two at once
    assert compare["architectures"] >= 2 and compare["identical"] == compare["architectures"]
    assert r["d_cpu_side"]["median_seconds"]["fvcore"] > 0
    # resumable: the finished searches are read back, not run again (nor the warm-up)
    assert load("throughput").main([*argv, "--parts", "c"]) == 0
    assert results.read_text().splitlines() == lines
    assert "study 'bench'" not in capfd.readouterr().out  # no search started


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
    assert {"short accuracy", "long accuracy", "MACs", "params"} <= set(signals)
    for s in signals.values():
        # tau is undefined (nan) where one side is all ties: 3 tiny runs scored on 100
        # images can tie; otherwise it and its interval lie in [-1, 1]
        lo, hi = s["kendall_tau_95"]
        assert math.isnan(s["kendall_tau"]) or -1 <= s["kendall_tau"] <= 1
        assert (math.isnan(lo) and math.isnan(hi)) or -1 <= lo <= hi <= 1
    final_noise = analysis["seed_noise"]["final"]
    assert len(final_noise["seed_stdev"]) == 1 and final_noise["dof"] == 2  # 1 arch, 3 seeds
    assert final_noise["pooled_stdev"] == final_noise["seed_stdev"][0]
    assert out.with_suffix(".html").read_text().count("Plotly.newPlot") == 1


def test_rank_statistics_against_known_values() -> None:
    """Kendall tau-b and Spearman rho (nas.results.front) on hand-checked cases, ties included."""
    import nas.results.front as fidelity

    assert fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert fidelity.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped pair of 6: (5 - 1) / 6
    assert abs(fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) - 4 / 6) < 1e-12
    # tau-b with a tie in y: C=5, D=0, ties_y=1 -> 5 / sqrt(6 * 5)
    assert abs(fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 3, 3]) - 5 / 30**0.5) < 1e-12
    assert fidelity.ranks([10, 30, 20, 20]) == [1.0, 4.0, 2.5, 2.5]
    assert abs(fidelity.spearman_rho([1, 2, 3, 4], [1, 2, 4, 3]) - 0.8) < 1e-12
    # Kendall tau-b with a pair tied in both lists: that pair counts for nothing at all
    assert fidelity.kendall_tau([1, 2, 2, 3], [1, 2, 2, 3]) == 1.0
    # C=3 (0-1, 0-2, 0-3), D=2 (1-3, 2-3), the 1-2 pair tied in both: 1 / sqrt(5 * 5)
    assert abs(fidelity.kendall_tau([1, 2, 2, 3], [1, 3, 3, 2]) - 0.2) < 1e-12


def test_top_quarter_overlap() -> None:
    overlap = load("fidelity").top_quarter_overlap
    x = [8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # top quarter: indices 0 and 1
    assert overlap(x, x) == 1.0
    assert overlap(x, x[::-1]) == 0.0  # the bottom quarter is not the top
    assert overlap(x, [8.0, 1.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]) == 0.5  # indices 0 and 2
    # the same top, another bottom: only the top counts (a bottom-quarter version says 0)
    assert overlap(x, [8.0, 7.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == 1.0


def test_bootstrap_intervals_on_data_with_known_answers() -> None:
    import nas.results.front as f

    bootstrap = load("fidelity").bootstrap
    x = [float(i) for i in range(12)]
    # every resample of a concordant (discordant) pairing has tau +1 (-1), ties aside
    assert bootstrap(f.kendall_tau, x, x) == (1.0, 1.0)
    assert bootstrap(f.kendall_tau, x, x[::-1]) == (-1.0, -1.0)
    # a statistic that is the same on every resample: the interval is that value
    assert bootstrap(lambda a, b: sum(b) - sum(a), x, [v + 1 for v in x]) == (12.0, 12.0)
    y = [0.0, 2.0, 1.0, 3.0, 5.0, 4.0, 7.0, 6.0, 8.0, 11.0, 9.0, 10.0]
    lo, hi = bootstrap(f.kendall_tau, x, y)
    assert lo < f.kendall_tau(x, y) < hi <= 1.0


def test_analyse_on_fixed_results_with_known_answers() -> None:
    """4 architectures: short ranks them as final does, long in reverse; seed noise pooled
    over the seeds run (one architecture missing a seed)."""
    fidelity = load("fidelity")
    final = [0.90, 0.80, 0.70, 0.60]
    rows = []
    for a, acc in enumerate(final):
        for budget, value in (("final", acc), ("short", acc - 0.1), ("long", 1.0 - acc)):
            rows.append(
                {
                    "preset": "cifar", "arch": a, "budget": budget, "seed": 0,
                    "device": "cpu", "torch": "x", "val_accuracy": value,
                    "final_loss": 1.0 - value, "train_seconds": 1.0,
                    "mmacs": 10.0 * (4 - a), "params": 100 * (4 - a),
                }
            )  # fmt: skip
    for a, seeds in ((0, {1: 0.91, 2: 0.92}), (1, {1: 0.84})):  # arch 1: seed 2 missing
        for seed, value in seeds.items():
            rows.append({**rows[3 * a], "seed": seed, "val_accuracy": value})
    r = fidelity.analyse(rows, "cifar")
    s = r["signals"]
    assert s["short accuracy"]["kendall_tau"] == 1.0 and s["long accuracy"]["kendall_tau"] == -1.0
    assert s["short accuracy"]["top_quarter_overlap"] == 1.0
    assert s["MACs"]["kendall_tau"] == 1.0 == s["params"]["kendall_tau"]  # same sign
    noise = r["seed_noise"]["final"]
    # arch 0: 0.90, 0.91, 0.92 (var 1e-4, 2 dof); arch 1: 0.80, 0.84 (var 8e-4, 1 dof)
    assert noise["dof"] == 3
    assert abs(noise["pooled_stdev"] - ((2 * 1e-4 + 1 * 8e-4) / 3) ** 0.5) < 1e-12
    mixed = [*rows, {**rows[0], "device": "NVIDIA H200"}]
    with pytest.raises(ValueError, match="2 devices, torch versions or datasets"):
        fidelity.one_device(mixed, "cifar", None)
    assert fidelity.one_device(mixed, "cifar", "cpu") == rows


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


def test_storage_load_smoke(tmp_path: Path) -> None:
    """storage_load.py at a smoke size: 3 clients against its own PostgreSQL, every
    figure present (nothing judged: 3 clients load nothing)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    out = tmp_path / "load.json"
    argv = ["--clients", "3", "--seconds", "4", "--trial-seconds", "0.5", "--out", str(out)]
    assert load("storage_load").main(argv) == 0
    [run] = json.loads(out.read_text())["runs"]
    assert run["clients"] == 3 and run["client_errors"] == 0 and run["trials_complete"] >= 3
    assert run["peak_server_connections"] >= 3 and run["overhead_p50_s"] > 0


def test_fidelity_refuses_to_mix_datasets() -> None:
    """Rows of one device and torch version, but of two datasets (--data), are not
    analysed together."""
    fidelity = load("fidelity")
    row = {"preset": "cifar", "device": "cpu", "torch": "2.13.0", "data": "aaaa"}
    assert fidelity.one_device([row, dict(row)], "cifar", None) == [row, row]
    with pytest.raises(ValueError, match=r"datasets .*data aaaa\).*data bbbb\)"):
        fidelity.one_device([row, {**row, "data": "bbbb"}], "cifar", None)


def test_shipped_latency_tiny(tmp_path: Path) -> None:
    """shipped_latency.py (a) at its tiny setting: one network, one round of each kind in
    its own fresh process, the ratios computed from them (nothing judged)."""
    out = tmp_path / "s.json"
    assert load("shipped_latency").main(["--tiny", "--parts", "a", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    [(name, a)] = r["a_ratio"].items()
    assert name == "tiny k=8 2-2-2 28x28 grey" and set(a["ms"]) == {"eager", "program", "package"}
    assert all(len(v) == 1 and v[0] > 0 for v in a["ms_rounds"].values())
    ms = a["ms"]
    assert math.isclose(a["package_over_eager"]["median"], ms["package"] / ms["eager"])
    assert "b_stand_in" not in r and "c_end_to_end" not in r


def test_halving_tiny_matches_the_compute_judges_and_resumes(
    tmp_path: Path, real_data_dir, capsys
) -> None:
    """halving.py at its tiny CPU setting: the halving search draws at least the uniform
    one's training images, every front network is trained at `final` once, each method is
    judged on its final accuracies, and a second run trains nothing (nothing ranked)."""
    import optuna

    from nas.study.record import TrialRecord

    halving = load("halving")
    out, work = tmp_path / "h.json", tmp_path / "work"
    assert halving.main(["--tiny", "--work", str(work), "--out", str(out)]) == 0
    url = f"sqlite:///{work / 'studies.db'}"
    uniform, halved = (
        optuna.load_study(study_name=n, storage=url) for n in ("uniform-0", "halving-0")
    )
    assert len(uniform.trials) == 3 and {TrialRecord.of(t).rung for t in uniform.trials} == {None}
    assert halving.spent(halved) >= halving.spent(uniform) > 0
    finals = [json.loads(x) for x in (work / "final.jsonl").read_text().splitlines()]
    assert len({json.dumps(r["config"], sort_keys=True) for r in finals}) == len(finals)
    assert all(r["train_images"] == 512 for r in finals)
    a = json.loads(out.read_text())
    for metric in ("hypervolume", "knee_final_accuracy", "train_images"):
        assert {"uniform", "halving"} <= set(a["summary"][metric]), metric
    assert a["summary"]["train_images"]["halving"]["mean"] == halving.spent(halved)
    assert {"MACs", "accuracy, whole budget", "accuracy, rung 0"} <= set(a["fidelity"])
    capsys.readouterr()
    assert halving.main(["--tiny", "--work", str(work)]) == 0
    assert (
        f"final: {len(finals)} of {len(finals)} networks trained before" in capsys.readouterr().out
    )
    assert len((work / "final.jsonl").read_text().splitlines()) == len(finals)
