"""Measured latency against MACs: is the CPU latency figure steady, and does MACs rank
networks as latency does?

  (a) stability: each of N networks of a preset's space (random, seed 0) has its CPU
      latency measured twice, as a trial measures it (nas.training.measure.cpu_latency: median of
      up to 21 runs on one thread); reported: the relative difference of the two medians,
      its median and its largest over the networks (and the same for the fastest run);
  (b) rank agreement over a real study: `nas.search` of --trials smoke trials of the tiny
      preset (random sampler, seed 0; every trial measures its CPU latency), then
      Spearman rho and Kendall tau between MACs (fvcore) and CPU latency, and between
      parameters and CPU latency, over the distinct networks;
  (c) the same rank agreement over N networks of the d2l preset, counted and timed but not
      trained (a d2l smoke trial takes minutes on a CPU).

    python benchmarks/latency.py --out benchmarks/results/latency-cpu.json
    python benchmarks/latency.py --tiny        # CI: tiny's space only, 2 trials, nothing judged
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.arch.macs import measure_cost
from nas.arch.space import PRESETS, sample
from nas.results.front import kendall_tau, spearman_rho
from nas.search import main as search_main
from nas.study.record import TrialRecord
from nas.training.measure import cpu_latency


def configs(preset: str, n: int, seed: int = 0) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(sample(t, PRESETS[preset]))
        study.tell(t, 0.0)
    return out


def stability(preset: str, n: int) -> dict[str, Any]:
    rows = []
    for c in configs(preset, n):
        a, b = cpu_latency(c), cpu_latency(c)
        rows.append(
            {
                "config": c.describe(),
                "ms": [a.value, b.value],
                "fastest_ms": [a.fastest, b.fastest],
                "runs": [a.runs, b.runs],
                "relative_difference": _rel(a.value, b.value),
                "fastest_relative_difference": _rel(a.fastest, b.fastest),
            }
        )
    diffs = [r["relative_difference"] for r in rows]
    fastest = [r["fastest_relative_difference"] for r in rows]
    return {
        "preset": preset,
        "networks": n,
        "median_relative_difference": statistics.median(diffs),
        "max_relative_difference": max(diffs),
        "fastest_median_relative_difference": statistics.median(fastest),
        "fastest_max_relative_difference": max(fastest),
        "rows": rows,
    }


def _rel(a: float, b: float) -> float:
    return abs(a - b) / ((a + b) / 2)


def agreement(macs: list[float], params: list[float], ms: list[float]) -> dict[str, Any]:
    return {
        "networks": len(ms),
        "macs_vs_latency": {
            "spearman_rho": spearman_rho(macs, ms),
            "kendall_tau": kendall_tau(macs, ms),
        },
        "params_vs_latency": {
            "spearman_rho": spearman_rho(params, ms),
            "kendall_tau": kendall_tau(params, ms),
        },
        "latency_ms_range": [min(ms), max(ms)],
        "mmacs_range": [min(macs), max(macs)],
    }


def study_agreement(trials: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/lat.db"
        argv = ["--preset", "tiny", "--budget", "smoke", "--trials", str(trials)]
        argv += ["--sampler", "random", "--seed", "0", "--device", "cpu"]
        if search_main([*argv, "--study", "lat", "--storage", url]) != 0:
            raise RuntimeError("nas.search failed")
        study = optuna.load_study(study_name="lat", storage=url)
        seen, macs, params, ms = set(), [], [], []
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            r = TrialRecord.of(t)
            key = json.dumps(r.config, sort_keys=True)
            if key in seen or "latency_cpu" not in r.costs:
                continue
            seen.add(key)
            macs.append(r.mmacs)
            params.append(r.params)
            ms.append(r.costs["latency_cpu"]["value"])
    return {"preset": "tiny", "trials": trials, **agreement(macs, params, ms)}


def untrained_agreement(preset: str, n: int) -> dict[str, Any]:
    macs, params, ms = [], [], []
    seen = set()
    for c in configs(preset, n, seed=1):
        if c.to_json() in seen:
            continue
        seen.add(c.to_json())
        cost = measure_cost(c)
        macs.append(cost.fvcore_macs / 1e6)
        params.append(cost.params)
        ms.append(cpu_latency(c).value)
    return {"preset": preset, **agreement(macs, params, ms)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiny",
        action="store_true",
        help="CI smoke run: the tiny space only, 2 networks, 2 trials",
    )
    p.add_argument("--networks", type=int, default=12, help="networks in (a) (default 12)")
    p.add_argument("--trials", type=int, default=40, help="trials of the study in (b)")
    p.add_argument("--d2l", type=int, default=30, help="d2l networks in (c) (default 30)")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    n, trials, d2l = (2, 2, 2) if a.tiny else (a.networks, a.trials, a.d2l)
    wide = "tiny" if a.tiny else "d2l"  # (a) and (c): the d2l space, or tiny's in CI
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tiny": a.tiny,
    }
    res["a_stability"] = [stability("tiny", n), stability(wide, max(2, n // 3))]
    for s in res["a_stability"]:
        print(
            f"(a) {s['preset']}: {s['networks']} networks measured twice: the two medians "
            f"differ by {s['median_relative_difference']:.1%} (median), "
            f"{s['max_relative_difference']:.1%} at most; their fastest runs by "
            f"{s['fastest_median_relative_difference']:.1%} and "
            f"{s['fastest_max_relative_difference']:.1%}"
        )
    res["b_study"] = study_agreement(trials)
    res["c_untrained"] = untrained_agreement(wide, d2l)
    for name in ("b_study", "c_untrained"):
        r = res[name]
        m, q = r["macs_vs_latency"], r["params_vs_latency"]
        print(
            f"({name[0]}) {r['preset']}, {r['networks']} networks "
            f"({r['mmacs_range'][0]:.1f} to {r['mmacs_range'][1]:.1f} MMACs, "
            f"{r['latency_ms_range'][0]:.2f} to {r['latency_ms_range'][1]:.2f} ms): "
            f"MACs vs CPU latency rho {m['spearman_rho']:.2f}, tau {m['kendall_tau']:.2f}; "
            f"params vs CPU latency rho {q['spearman_rho']:.2f}, tau {q['kendall_tau']:.2f}"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
