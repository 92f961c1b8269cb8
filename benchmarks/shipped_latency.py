"""The latency nas ships against the eager network's: is the AOTInductor CPU package
(OUT.cpu.pt2, nas.deploy) no slower, and does a trial's eager figure rank networks as the
package does?

  (a) ratio: the d2l chapter network (28x28 grey in, 96x96 inside), a tiny network on
      28x28 grey images (k=8, convs 2-2-2, theta 0.5) and the same on 40x40 colour images,
      each in alternating fresh processes over --rounds rounds, all timed alike (1 thread,
      batch 1, uint8 images of the data's size in, a trial's runs:
      nas.training.measure.time_runs): eager (nas.deploy.artifact.Deployed in Python),
      the torch.export program's .module() (OUT.pt2) and the AOTInductor package
      (OUT.cpu.pt2). Reported: each one's median ms over rounds and the package/eager and
      program/eager ratios of each round (median, min, max).
  (b) stand-in agreement: --networks networks of the tiny space (random, seed 0): the
      eager figure a trial stores (nas.training.measure.cpu_latency, in this process)
      against the package's (nas.deploy.timing.shipped_latency): Spearman rho, Kendall
      tau and the range of package/eager.
  (c) end to end on real Fashion-MNIST: a tiny search with a CPU latency budget,
      `nas.export --pick max-latency-ms=B` (which times its pick as shipped), `nas.train`
      of the pick (which writes and times OUT.cpu.pt2), and an independent timing of that
      very file: torch.utils.benchmark's Timer in a fresh process, not nas's loop.

  (g) on a GPU (--parts g, benchmarks/gpu_all.sh): the same three networks in bf16 on the
      GPU, uint8 images on the GPU in, batch 1, wall-clock per call with a synchronize
      (what a caller waits), 10 untimed calls then 50 timed, in fresh processes: eager
      (Deployed in Python) and its AOTInductor CUDA package; beside them the figure a
      trial stores (nas.training.measure.gpu_latency_and_throughput: a CUDA-graph replay
      of the network, timed by CUDA events).

    python benchmarks/shipped_latency.py --out benchmarks/results/shipped-latency-cpu.json
    python benchmarks/shipped_latency.py --tiny   # CI: one network, one round, no (c)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch

from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.arch.model import build_model
from nas.arch.space import PRESETS, sample
from nas.deploy.artifact import compile_package, export_program, image_shape
from nas.deploy.timing import shipped_latency
from nas.results.front import kendall_tau, spearman_rho
from nas.training import measure
from nas.training.measure import cpu_latency, cpu_name

TINY_NET = PRESETS["tiny"].config(8, (2, 2, 2), 0.5)  # k=8, convs 2-2-2, theta 0.5
NETWORKS = {
    "d2l-chapter 28x28 grey": (D2L_CHAPTER, (28, 28)),
    "tiny k=8 2-2-2 28x28 grey": (TINY_NET, (28, 28)),
    "tiny k=8 2-2-2 40x40 colour": (
        ArchConfig(**{**TINY_NET.to_dict(), "in_channels": 3, "image_size": 40}),
        (40, 40, 3),
    ),
}

# One round of one kind in a fresh process: eager builds the network from its config (with
# nas), program and package load the files (torch alone); all time with time_runs.
_ROUND = """from __future__ import annotations
import json, sys, time
import torch
torch.set_num_threads(1)
kind, path, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
CPU_WARMUP, CPU_RUNS, CPU_SECONDS = json.loads(sys.argv[4])
if kind == "eager":
    from nas.arch.config import ArchConfig
    from nas.arch.model import build_model
    from nas.deploy.artifact import Deployed
    config = ArchConfig.from_json(open(path).read())
    run = Deployed(build_model(config).eval(), tuple(shape[:2]), config.image_size).eval()
elif kind == "program":
    run = torch.export.load(path).module()
else:
    run = torch._inductor.aoti_load_package(path)
x = torch.zeros(1, *shape, dtype=torch.uint8)
{time_runs}
with torch.inference_mode():
    print(json.dumps(time_runs(lambda: run(x))))
"""

# The independent timing of (c): torch.utils.benchmark, its own loop and statistics.
_INDEPENDENT = """
import json, sys
import torch
import torch.utils.benchmark as benchmark
torch.set_num_threads(1)
run = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.zeros(1, *json.loads(sys.argv[2]), dtype=torch.uint8)
with torch.inference_mode():
    m = benchmark.Timer("run(x)", globals={"run": run, "x": x}, num_threads=1)
    print(m.blocked_autorange(min_run_time=3).median * 1000)
"""


# One round on a GPU in a fresh process: eager bf16 Deployed or the CUDA package.
_GPU_ROUND = """
import json, sys, time
import torch
kind, path, shape = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if kind == "eager":
    from nas.arch.config import ArchConfig
    from nas.arch.model import build_model
    from nas.deploy.artifact import Deployed
    config = ArchConfig.from_json(open(path).read())
    net = build_model(config).to(device="cuda", dtype=torch.bfloat16).eval()
    run = Deployed(net, tuple(shape[:2]), config.image_size, torch.bfloat16).eval()
else:
    run = torch._inductor.aoti_load_package(path)
x = torch.zeros(1, *shape, dtype=torch.uint8, device="cuda")
times = []
with torch.inference_mode():
    for i in range(60):
        t = time.perf_counter()
        run(x)
        torch.cuda.synchronize()
        if i >= 10:
            times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def gpu(rounds: int) -> dict[str, Any]:
    from nas.training.measure import gpu_latency_and_throughput

    device = torch.device("cuda")
    out = {}
    for name, (config, shape) in NETWORKS.items():
        trial = gpu_latency_and_throughput(config, device)[0]
        with tempfile.TemporaryDirectory() as tmp:
            files = {"eager": Path(tmp) / "config.json"}
            files["eager"].write_text(config.to_json())
            program = export_program(
                build_model(config), config, shape, device="cuda", dtype=torch.bfloat16
            )
            files["package"] = compile_package(program, Path(tmp) / "net.cuda.pt2")
            ms: dict[str, list[float]] = {k: [] for k in files}
            for r in range(rounds):
                for kind in list(files) if r % 2 == 0 else list(files)[::-1]:
                    times = _fresh(["-c", _GPU_ROUND, kind, str(files[kind]), json.dumps(shape)])
                    ms[kind].append(statistics.median(json.loads(times)) * 1000)
        out[name] = {
            "config": config.describe(),
            "input": list(shape),
            "device": trial.device,
            "trial_cuda_graph_ms": trial.value,
            "ms": {k: statistics.median(v) for k, v in ms.items()},
            "ms_rounds": ms,
            "package_over_eager": _spread([p / e for p, e in zip(ms["package"], ms["eager"])]),
            "package_over_trial": statistics.median(ms["package"]) / trial.value,
        }
        print(f"(g) {name}: {json.dumps(out[name]['ms'])}, trial {trial.value:.3f}", flush=True)
    return out


def _fresh(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1])
    return done.stdout.strip().splitlines()[-1]


def _round(kind: str, path: Path, shape: tuple[int, ...]) -> float:
    script = _ROUND.format(time_runs=inspect.getsource(measure.time_runs))
    loop = [measure.CPU_WARMUP, measure.CPU_RUNS, measure.CPU_SECONDS]
    out = _fresh(["-c", script, kind, str(path), json.dumps(shape), json.dumps(loop)])
    return statistics.median(json.loads(out)) * 1000


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def ratio(rounds: int) -> dict[str, Any]:
    out = {}
    for name, (config, shape) in NETWORKS.items():
        with tempfile.TemporaryDirectory() as tmp:
            files = {"eager": Path(tmp) / "config.json", "program": Path(tmp) / "net.pt2"}
            files["eager"].write_text(config.to_json())
            program = export_program(build_model(config), config, shape)
            torch.export.save(program, files["program"])
            files["package"] = compile_package(program, Path(tmp) / "net.cpu.pt2")
            ms: dict[str, list[float]] = {k: [] for k in files}
            for r in range(rounds):
                kinds = list(files) if r % 2 == 0 else list(files)[::-1]
                for kind in kinds:
                    ms[kind].append(_round(kind, files[kind], shape))
        out[name] = {
            "config": config.describe(),
            "input": list(shape),
            "ms": {k: statistics.median(v) for k, v in ms.items()},
            "ms_rounds": ms,
            "package_over_eager": _spread([p / e for p, e in zip(ms["package"], ms["eager"])]),
            "program_over_eager": _spread([p / e for p, e in zip(ms["program"], ms["eager"])]),
        }
        print(f"(a) {name}: {json.dumps(out[name]['ms'])}", flush=True)
    return out


def stand_in(n: int) -> dict[str, Any]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rows, seen = [], set()
    while len(rows) < n:
        t = study.ask()
        config = sample(t, PRESETS["tiny"])
        study.tell(t, 0.0)
        if config.to_json() in seen:
            continue
        seen.add(config.to_json())
        eager = cpu_latency(config)
        shipped = shipped_latency(config, (28, 28))
        rows.append(
            {"config": config.describe(), "eager_ms": eager.value, "shipped_ms": shipped.value}
        )
        print(f"(b) {rows[-1]}", flush=True)
    eager = [r["eager_ms"] for r in rows]
    shipped = [r["shipped_ms"] for r in rows]
    return {
        "networks": len(rows),
        "spearman_rho": spearman_rho(eager, shipped),
        "kendall_tau": kendall_tau(eager, shipped),
        "shipped_over_eager": _spread([s / e for s, e in zip(shipped, eager)]),
        "rows": rows,
    }


def end_to_end(budget_ms: float) -> dict[str, Any]:
    """nas.search, nas.export, nas.train as a user runs them; then the independent timing."""
    with tempfile.TemporaryDirectory() as tmp:

        def run(*args: str) -> str:
            return _fresh_all(["-m", *args], cwd=tmp)

        run(
            "nas.search",
            *("--preset", "tiny", "--budget", "smoke", "--trials", "6", "--device", "cpu"),
            *("--study", "ship", "--sampler", "random", "--seed", "0"),
            *("--max-latency-ms", str(budget_ms)),
        )
        exported = run(
            "nas.export",
            "--study",
            "ship",
            "--out",
            "best.json",
            "--pick",
            f"max-latency-ms={budget_ms}",
        )
        trained = run("nas.train", "best.json", "--epochs", "0.05", "--device", "cpu")
        record = json.loads((Path(tmp) / "best.json").read_text())
        result = json.loads((Path(tmp) / "best.result.json").read_text())
        shape = list(image_shape(*record["data"]["shape"]))
        independent = float(
            _fresh(["-c", _INDEPENDENT, str(Path(tmp) / "best.cpu.pt2"), json.dumps(shape)])
        )
    export_ms = record["costs"]["latency_cpu_shipped"]["value"]
    train_ms = result["latency_cpu_shipped"]["value"]
    return {
        "budget_ms": budget_ms,
        "pick": record["config"],
        "search_eager_ms": record["costs"]["latency_cpu"]["value"],
        "export_shipped_ms": export_ms,
        "train_shipped_ms": train_ms,
        "independent_ms": independent,
        "export_over_independent": export_ms / independent,
        "train_over_independent": train_ms / independent,
        "export_line": next(x for x in exported.splitlines() if x.startswith("CPU latency")),
        "train_line": next(x for x in trained.splitlines() if "as shipped" in x),
    }


def _fresh_all(args: list[str], cwd: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"{args[1]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CI: one network, one round, no (c)")
    p.add_argument("--rounds", type=int, default=5, help="fresh-process rounds in (a)")
    p.add_argument("--networks", type=int, default=8, help="networks in (b)")
    p.add_argument("--budget-ms", type=float, default=3.0, help="(c)'s latency budget")
    p.add_argument("--parts", default="abc", help="which parts to run (default abc; g: GPU)")
    p.add_argument("--out", help="JSON file to write")
    a = p.parse_args(argv)
    if a.tiny:
        NETWORKS.pop("d2l-chapter 28x28 grey")
        NETWORKS.pop("tiny k=8 2-2-2 40x40 colour")
        a.rounds, a.networks, a.parts = 1, 2, a.parts.replace("c", "")
    out: dict[str, Any] = {
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.platform()}",
        "torch": torch.__version__,
        "command": "python benchmarks/shipped_latency.py " + " ".join(argv or sys.argv[1:]),
    }
    if "a" in a.parts:
        out["a_ratio"] = ratio(a.rounds)
    if "b" in a.parts:
        out["b_stand_in"] = stand_in(a.networks)
    if "c" in a.parts:
        out["c_end_to_end"] = end_to_end(a.budget_ms)
    if "g" in a.parts:
        if not torch.cuda.is_available():
            print("(g) skipped: no CUDA GPU", file=sys.stderr)
        else:
            out["g_gpu"] = gpu(a.rounds)
    text = json.dumps(out, indent=2)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(re.sub(r'\n\s+"ms_rounds": \{[^}]*\},?', "", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
