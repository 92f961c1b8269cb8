"""The search's throughput, measured side by side in one run on one device.

  (a) a d2l-style training loop on the chapter's network (the baseline): the chapter's
      fp32 loop, the batch copied from host memory every step, plain SGD at a constant
      LR 0.1, batch 256; unlike the chapter's loader it reads whole batches in our order;
  (b) this project's trial training on the same network and the same images in the same
      order, eager and as a CUDA graph (nas.training.step), with validation accuracy for each.
      (a) and (b) each get the same untimed warm-up first, then run 3 times in
      alternating order (a b c, c b a, a b c); the median is reported;
  (c) `nas.search` of 40 `short` trials of the cifar and of the d2l preset, each with
      --concurrency 1 and with the candidate K (nas.parallel.run.CANDIDATE_CONCURRENCY), random
      sampler, seed 0, so both K train the same architectures: trials per minute, total
      images/s, achieved TFLOP/s, GPU utilisation (NVML), each trial's time split into
      parts, and every architecture's accuracy under both K side by side; --hundred adds
      100 trials per preset at the candidate K (the wall-clock targets). One JSON line per
      finished search (--results): a run cut short resumes where it stopped;
  (d) the CPU side of a trial: sampling, building, fvcore counting and storage writes.

Achieved TFLOP/s counts a training step as 3x the forward pass and 2 FLOPs per MAC
(fvcore), against the card's bf16 dense matmul peak measured here (8192^3 GEMMs).

    python benchmarks/throughput.py --results benchmarks/results/throughput-H200.jsonl \
        --out benchmarks/results/throughput-H200.json
    python benchmarks/throughput.py --tiny          # CPU smoke test (CI), nothing timed

On an H200, (c) at K=1 takes about 5 min for cifar and 3 min for d2l: to fit short
runs of a GPU, run `--parts ab,c --presets cifar` in one call and `--parts c --presets
d2l --hundred` in the next (both resume from --results).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F

from nas.arch.config import D2L_CHAPTER
from nas.arch.macs import closed_form_macs, measure_cost
from nas.arch.model import build_model
from nas.arch.space import PRESETS, sample
from nas.data.dataset import Dataset, load_fashion_mnist, to_input
from nas.parallel.run import CANDIDATE_CONCURRENCY
from nas.parallel.threads import GpuMonitor
from nas.study.record import TrialRecord
from nas.study.storage import open_storage
from nas.training.budget import TrainBudget, get_budget
from nas.training.fit import evaluate, pick_device, train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 GEMM throughput, the card's practical peak."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def tflops(macs: int, images_per_second: float) -> float:
    return 3 * 2 * macs * images_per_second / 1e12


def first_epoch_order(data: Dataset, budget: TrainBudget) -> torch.Tensor:
    """The training images in the order nas.training.fit draws them in its first epoch."""
    device = data.train_x.device
    gen = torch.Generator(device=device).manual_seed(budget.seed)
    return torch.randperm(len(data.train_x), device=device, generator=gen)


def d2l_loop(data: Dataset, budget: TrainBudget, device: torch.device) -> dict[str, Any]:
    """The chapter's loop: host tensors resized to 96x96, .to(device) each step, fp32;
    the same images in the same order as nas.training.fit (budget.steps whole batches)."""
    bs, steps = budget.batch_size, budget.steps
    idx = first_epoch_order(data, budget)[: steps * bs]
    host_x = to_input(data.train_x[idx].cpu(), 96, torch.float32)  # (N, 1, 96, 96)
    host_y = data.train_y[idx].cpu()
    torch.manual_seed(0)
    net = build_model(D2L_CHAPTER).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        X, y = host_x[i * bs : (i + 1) * bs].to(device), host_y[i * bs : (i + 1) * bs].to(device)
        loss = F.cross_entropy(net(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    seconds = time.perf_counter() - t
    val_x, val_y = data.val_x[: budget.val_images], data.val_y[: budget.val_images]
    acc = evaluate(net, D2L_CHAPTER, val_x, val_y)
    return {
        "images": steps * bs,
        "seconds": seconds,
        "images_per_second": steps * bs / seconds,
        "val_accuracy": acc,
    }


def compare_loops(
    data: Dataset, budget: TrainBudget, device: torch.device, reps: int = 3
) -> dict[str, Any]:
    """(a) and (b): untimed warm-up of each, then `reps` timed runs in alternating order."""
    runs: dict[str, Callable[[TrainBudget], dict[str, Any]]] = {
        "d2l_style_loop": lambda b: d2l_loop(data, b, device)
    }
    for graph in [False, True] if device.type == "cuda" else [False]:
        runs["ours_cuda_graph" if graph else "ours_eager"] = partial(ours, data, graph=graph)
    warm = replace(budget, train_images=5 * budget.batch_size, val_images=budget.batch_size)
    for run in runs.values():  # cuDNN/cuBLAS set-up and kernel choice: never timed
        run(warm)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            results[name].append(runs[name](budget))
    out = {}
    for name, rs in results.items():
        ips = [r["images_per_second"] for r in rs]
        median = sorted(rs, key=lambda r: r["images_per_second"])[len(rs) // 2]
        out[name] = {**median, "images_per_second_runs": ips, "reps": reps}
    return out


def ours(data: Dataset, budget: TrainBudget, graph: bool) -> dict[str, Any]:
    r = train_and_evaluate(D2L_CHAPTER, budget, data.train, data.val, cuda_graph=graph)
    return {
        "cuda_graph": graph,
        "images": r.train_images,
        "seconds": r.train_seconds,
        "warmup_seconds": r.warmup_seconds,
        "images_per_second": r.images_per_second,
        "val_accuracy": r.accuracy,
        "final_loss": r.final_loss,
    }


def search_run(
    preset: str,
    k: int,
    trials: int,
    budget: str,
    extra: list[str],
    data_dir: str | None,
    device: torch.device,
) -> dict[str, Any]:
    """`python -m nas.search` with --concurrency k in a fresh process (no cuDNN plans,
    cache or warm allocator inherited from another K), random sampler, seed 0: the same
    architectures for every k (trial n draws from the seed and n), so their accuracies
    can be compared. Rates are over the trials' own span (first start to last end), so
    the process's start (imports, CUDA context, data onto the device) counts for no K."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        argv = [
            *("--preset", preset, "--budget", budget, "--trials", str(trials)),
            *("--concurrency", str(k), "--workers", "1", "--sampler", "random", "--seed", "0"),
            *("--device", device.type, "--study", "bench", "--storage", url, *extra),
        ]
        if data_dir:
            argv += ["--data-dir", data_dir]
        with GpuMonitor(device) as gpu:
            t = time.perf_counter()
            rc = subprocess.run([sys.executable, "-m", "nas.search", *argv], cwd=ROOT).returncode
            process_wall = time.perf_counter() - t
        if rc != 0:
            raise RuntimeError(f"nas.search exited {rc}")
        study = optuna.load_study(study_name="bench", storage=open_storage(url))
        done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    trained = [t for t in done if TrialRecord.of(t).trained]
    wall = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    parts: dict[str, list[float]] = {}
    overhead, durations = [], []
    for t in trained:
        duration = (t.datetime_complete - t.datetime_start).total_seconds()
        secs = dict(TrialRecord.of(t).seconds)
        secs["storage_and_other"] = duration - sum(secs.values())
        for name, v in secs.items():
            parts.setdefault(name, []).append(v)
        durations.append(duration)
        overhead.append(duration - secs["steady_train"])
    b = get_budget(budget)
    images = len(trained) * b.steps * b.batch_size
    macs = sum(TrialRecord.of(t).macs_fvcore for t in trained)
    flops = 3 * 2 * macs * b.steps * b.batch_size
    return {
        "preset": preset,
        "concurrency": k,
        "budget": budget,
        "trials": len(done),
        "trained": len(trained),
        "failed": trials - len(done),
        "wall_seconds": wall,
        "process_seconds": process_wall,
        "trials_per_minute": 60 * len(done) / wall,
        "images_per_second_total": images / wall,
        "tflops_total": flops / wall / 1e12,
        "gpu_utilisation_percent": gpu.mean(),
        "gpu_utilisation_samples": len(gpu.samples),
        "median_trial_seconds": statistics.median(durations) if durations else None,
        "median_overhead_seconds": statistics.median(overhead) if overhead else None,
        "median_parts_seconds": {n: statistics.median(v) for n, v in parts.items()},
        "val_accuracy_by_trial": {str(t.number): t.values[0] for t in trained},
        "config_by_trial": {str(t.number): t.params for t in trained},
    }


def run_order(ks: list[int], repeats: int) -> list[tuple[int, int]]:
    """(repeat, K) in alternating order, ABBA-style: 1 4, 4 1, 1 4, ... so that neither K
    always runs first (a warmer GPU, a fuller page cache)."""
    return [(r, k) for r in range(repeats) for k in (ks if r % 2 == 0 else ks[::-1])]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One (preset, K) over its repeats: the run of median trials/min (the lower median:
    of 2, the slower), with every repeat's rate beside it."""
    ordered = sorted(runs, key=lambda r: r["trials_per_minute"])
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["repeats"] = len(runs)
    out["trials_per_minute_repeats"] = [r["trials_per_minute"] for r in runs]
    return out


def search_runs(
    presets: list[str],
    ks: list[int],
    repeats: int,
    trials: int,
    budget: str,
    extra: list[str],
    a: argparse.Namespace,
    device: torch.device,
) -> list[dict[str, Any]]:
    """(c): per preset, one untimed warm-up search (2 trials), then each K `repeats` times
    in alternating order, each in a fresh process; the median repeat per (preset, K).
    With --results, one JSON line per finished search, and finished ones are not run
    again (a run cut short resumes where it stopped)."""
    done: dict[tuple[str, int, int, str, int], dict[str, Any]] = {}
    path = Path(a.results) if a.results else None
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            key = (r["preset"], r["concurrency"], r["trials"], r["budget"], r.get("repeat", 0))
            done[key] = r
    out = []
    for preset in presets:
        order = run_order(ks, repeats)
        if any((preset, k, trials, budget, r) not in done for r, k in order):
            print(f"  {preset}: untimed warm-up search (2 trials, K={ks[0]})", flush=True)
            search_run(preset, ks[0], 2, budget, extra, a.data_dir, device)
        for rep, k in order:
            key = (preset, k, trials, budget, rep)
            if key not in done:
                r = search_run(preset, k, trials, budget, extra, a.data_dir, device)
                r["trials"] = trials  # asked for; "trained" and "failed" say what became of them
                r["repeat"] = rep
                if path is not None:
                    with path.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                done[key] = r
        for k in ks:
            out.append(median_run([done[(preset, k, trials, budget, r)] for r in range(repeats)]))
    return out


def compare_accuracies(one: dict[str, Any], many: dict[str, Any]) -> dict[str, Any]:
    """The same trial numbers (same architectures) trained alone and beside others."""
    a, b = one["val_accuracy_by_trial"], many["val_accuracy_by_trial"]
    common = sorted(set(a) & set(b), key=int)
    assert all(one["config_by_trial"][n] == many["config_by_trial"][n] for n in common)
    diffs = [abs(a[n] - b[n]) for n in common]
    return {
        "architectures": len(common),
        "identical": sum(d == 0 for d in diffs),
        "same_to_4_digits": sum(f"{a[n]:.4f}" == f"{b[n]:.4f}" for n in common),
        "max_abs_difference": max(diffs) if diffs else None,
        "side_by_side": [(int(n), a[n], b[n]) for n in common],
    }


# The targets of several trials at once: trials/min of the candidate K over K=1, and the
# wall time of 100 short trials.
SPEEDUP_TARGET = {"cifar": 3.0, "d2l": 2.0}
HUNDRED_MINUTES_TARGET = {"cifar": 3.0, "d2l": 4.0}
OVERHEAD_TARGET_SECONDS = 0.5


def print_targets(res: dict[str, Any]) -> None:
    print("  targets:")
    for name, c in res["c_compare"].items():
        want = SPEEDUP_TARGET.get(name.split()[0])
        got = c["speedup_trials_per_minute"]
        if want is not None:
            print(f"    {name}: x{got:.2f} trials/min, target x{want:g}: " + _met(got >= want))
        print(f"    {name}: largest accuracy difference {c['max_abs_difference']}")
    for r in res.get("c_hundred", []):
        want, got = HUNDRED_MINUTES_TARGET.get(r["preset"]), r["wall_seconds"] / 60
        if want is not None:
            print(
                f"    100 {r['preset']} trials: {got:.1f} min, target {want:g}: "
                + _met(got < want)
            )
    for r in res["c_search"]:
        got = r["median_overhead_seconds"]
        if r["concurrency"] != 1 and got is not None:
            print(
                f"    {r['preset']} K={r['concurrency']} median overhead {got:.3f} s, target "
                f"{OVERHEAD_TARGET_SECONDS} s: " + _met(got < OVERHEAD_TARGET_SECONDS)
            )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu_side(n: int) -> dict[str, Any]:
    """Sample + build + fvcore + one trial's storage writes, on this machine's CPU."""
    space = PRESETS["cifar"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/cpu.db")
        study = optuna.create_study(
            storage=storage,
            directions=["maximize", "minimize"],
            sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, constant_liar=True),
        )
        for _ in range(n):
            t0 = time.perf_counter()
            trial = study.ask()
            config = sample(trial, space)
            t1 = time.perf_counter()
            build_model(config)
            t2 = time.perf_counter()
            cost = measure_cost(config)
            t3 = time.perf_counter()
            closed_form_macs(config)
            t4 = time.perf_counter()
            trial.set_user_attr("config", config.to_dict())
            trial.set_user_attr("params", cost.params)
            study.tell(trial, (0.5, cost.fvcore_macs / 1e6))
            t5 = time.perf_counter()
            rows.append(
                {
                    "sample": t1 - t0,
                    "build": t2 - t1,
                    "fvcore": t3 - t2,
                    "closed_form": t4 - t3,
                    "storage": t5 - t4,
                }
            )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["build_fvcore_storage"] = med["build"] + med["fvcore"] + med["storage"]
    return {"configs": n, "median_seconds": med}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny budgets, untimed")
    p.add_argument("--trials", type=int, default=40, help="trials per search run (c)")
    p.add_argument(
        "--concurrency", help="K values to compare in (c), first the baseline (default 1,auto)"
    )
    p.add_argument(
        "--presets", help="presets searched in (c) (default cifar,d2l; cifar with --tiny)"
    )
    p.add_argument(
        "--repeats", type=int, default=2, help="searches per (preset, K) in (c), alternating order"
    )
    p.add_argument(
        "--hundred", action="store_true", help="also 100 short trials per preset at candidate K"
    )
    p.add_argument("--parts", default="ab,c,d", help="which parts to run (default ab,c,d)")
    p.add_argument("--results", help="JSON lines of finished searches (c), resumed from")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="write all results as JSON here")
    a = p.parse_args(argv)
    a.presets = a.presets or ("cifar" if a.tiny else "cifar,d2l")
    device = pick_device(a.device)
    data = load_fashion_mnist(a.data_dir).to(device)
    if a.tiny:
        budget = replace(
            get_budget("smoke"), name="tiny", train_images=64, batch_size=32, val_images=100
        )
        search_budget, extra, trials = "smoke", ["--growth-rate", "8:12:4", "--convs", "1:2"], 2
        presets, candidate_k = a.presets.split(","), 2
    else:
        budget, search_budget, extra, trials = get_budget("short"), "short", [], a.trials
        presets, candidate_k = a.presets.split(","), CANDIDATE_CONCURRENCY
    macs = sum(closed_form_macs(D2L_CHAPTER).values())
    res: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tiny": a.tiny,
        "bf16_peak_tflops": bf16_peak_tflops(device),
        "d2l_network_macs_fvcore": macs,
    }
    print(
        f"device {res['device']}, torch {res['torch']}, bf16 peak "
        f"{res['bf16_peak_tflops'] or float('nan'):.0f} TFLOP/s",
        flush=True,
    )

    parts = set(a.parts.split(","))
    if "ab" in parts:
        loops = compare_loops(data, budget, device, reps=3)
        for r in loops.values():
            r["tflops"] = tflops(macs, r["images_per_second"])
        res["a_b_loops"] = loops
        base = loops["d2l_style_loop"]["images_per_second"]
        print(
            f"\n(a)/(b) d2l chapter network, the same {budget.steps * budget.batch_size:,} images "
            "in the same order; median of 3 after an untimed warm-up:"
        )
        labels = {
            "d2l_style_loop": "d2l-style loop (fp32, host copy)",
            "ours_eager": "ours, eager",
            "ours_cuda_graph": "ours, CUDA graph",
        }
        for name, r in loops.items():
            runs = ", ".join(f"{v:,.0f}" for v in r["images_per_second_runs"])
            print(
                f"  {labels[name]:<33} {r['images_per_second']:>9,.0f} img/s ({runs})  "
                f"{r['tflops']:6.2f} TFLOP/s  x{r['images_per_second'] / base:4.1f}  "
                f"val acc {r['val_accuracy']:.4f}"
            )
        sys.stdout.flush()

    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "c" in parts:
        ks = [int(x) for x in a.concurrency.split(",")] if a.concurrency else [1, candidate_k]
        runs = search_runs(presets, ks, a.repeats, trials, search_budget, extra, a, device)
        res["c_search"] = runs
        if a.hundred and not a.tiny:
            res["c_hundred"] = search_runs(presets, [candidate_k], 1, 100, "short", [], a, device)
        print(f"\n(c) nas.search, {search_budget} budget, random sampler seed 0, K at once:")
        for r in runs + res.get("c_hundred", []):
            split = ", ".join(f"{n} {v:.3f}" for n, v in r["median_parts_seconds"].items())
            util = r["gpu_utilisation_percent"]
            print(
                f"  {r['preset']:<5} K={r['concurrency']:<2} {r['trials']:>3} trials "
                f"({r['failed']} failed): {r['wall_seconds']:6.1f} s, "
                f"{r['trials_per_minute']:5.1f} trials/min (repeats: "
                + ", ".join(f"{v:.1f}" for v in r["trials_per_minute_repeats"])
                + "), "
                f"{r['images_per_second_total']:>8,.0f} img/s, {r['tflops_total']:6.2f} TFLOP/s"
                + (f" of {res['bf16_peak_tflops']:.0f}" if res["bf16_peak_tflops"] else "")
                + (f", GPU busy {util:.0f}%" if util is not None else "")
                + f"; median overhead {r['median_overhead_seconds'] or float('nan'):.3f} s "
                f"({split})"
            )
        res["c_compare"] = {}
        for p in presets:
            one = next(r for r in runs if r["preset"] == p and r["concurrency"] == ks[0])
            for many in (r for r in runs if r["preset"] == p and r["concurrency"] != ks[0]):
                c = compare_accuracies(one, many)
                c["speedup_trials_per_minute"] = (
                    many["trials_per_minute"] / one["trials_per_minute"]
                )
                k = many["concurrency"]
                res["c_compare"][f"{p} K={ks[0]} vs K={k}"] = c
                largest = c["max_abs_difference"]
                print(
                    f"  {p}: K={k} vs K={ks[0]}: x{c['speedup_trials_per_minute']:.2f} "
                    f"trials/min; of {c['architectures']} architectures {c['identical']} "
                    f"identical, {c['same_to_4_digits']} the same to 4 digits, largest "
                    f"difference {'-' if largest is None else f'{largest:.4f}'}"
                )
        if not a.tiny:
            print_targets(res)
        sys.stdout.flush()

    if "d" in parts:
        res["d_cpu_side"] = cpu_side(5 if a.tiny else 20)
        med = res["d_cpu_side"]["median_seconds"]
        print(
            "\n(d) CPU side of a trial (median s): "
            + ", ".join(f"{k} {v:.4f}" for k, v in med.items())
        )
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
