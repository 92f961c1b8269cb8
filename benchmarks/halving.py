"""Does successive halving find a better front than a uniform search for the same training?

For each search seed, two searches on the same data, space, train budget and sampler
(TPE, `--seed S`), each a real `nas.search` in its own process:
- uniform: `--trials N`, every network trained on the whole budget;
- halving: `--halving ETA` (3 rungs), its runs added a few at a time until they have drawn
  at least the uniform search's training images (it may draw a little more: both figures
  are reported).
Each search is then judged by a longer training of the networks on its front (and of a
few more it trained, --extra, so that the fidelity figures see more than fronts): the
`final` budget, --final-images from scratch with the budget's schedule and seed, scored
on the same validation split (the test split is never used). A network is trained at
`final` once, whichever searches found it.

Per method, over the seeds (mean, and a 95 % t interval; halving minus uniform paired by
seed): the hypervolume of (final accuracy, MMACs (fvcore)) of its front's networks,
against a reference point fixed by the space (nas.results.front); the final accuracy of
its knee pick and of its most accurate network under --cap MMACs; the training images it
drew. Fidelity, over every network trained at `final`: Kendall tau and Spearman rho, with
bootstrap 95 % intervals over networks, against the final accuracy, of its accuracy at
each rung of the halving searches, at the whole budget of the uniform ones, of its final
training loss at that budget (lower ranks higher) and of its MACs alone.

CPU protocol (about 70 minutes on a 2-core x86 VM): the `tiny` preset, the `smoke-long`
budget (2,048 training images, 500 validation images scored), on the first 4,096 images
of Fashion-MNIST's training split (its validation split as it is), final 8,192 images
(two passes over the subset), 3 seeds of 16 uniform trials:

    python benchmarks/halving.py --out benchmarks/results/halving-cpu.json
    python benchmarks/halving.py --tiny --work /tmp/h   # seconds: checks the machinery

Resumable: the studies live in --work/studies.db (a search continues where its study
stopped), each `final` run is a JSON line of --work/final.jsonl (a network there is not
trained again).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from fidelity import bootstrap

from nas.arch.config import ArchConfig
from nas.arch.macs import closed_form_mmacs
from nas.arch.space import SearchSpace
from nas.data.dataset import load_data
from nas.results.front import (
    hypervolume_history,
    hypervolume_reference,
    kendall_tau,
    knee_index,
    pareto_front,
    spearman_rho,
)
from nas.study.record import StudyRecord, TrialRecord
from nas.training.budget import get_budget
from nas.training.fit import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def protocol(tiny: bool) -> dict[str, Any]:
    if tiny:
        return {"budget": "smoke", "subset": 1024, "final_images": 512, "trials": 3,
                "seeds": 1, "eta": 2, "extra": 1, "chunk": 2}  # fmt: skip
    return {"budget": "smoke-long", "subset": 4096, "final_images": 8192, "trials": 16,
            "seeds": 3, "eta": 3, "extra": 2, "chunk": 4}  # fmt: skip


def write_subset(work: Path, n: int) -> Path:
    """The first n training images of Fashion-MNIST and its validation split, as a .npz."""
    path = work / f"fashion-mnist-{n}.npz"
    if not path.exists():
        d = load_data("fashion-mnist")
        grey = lambda x: x[..., 0].numpy()  # noqa: E731 - (N, H, W, 1) -> (N, H, W)
        np.savez(
            path,
            train_images=grey(d.train_x[:n]),
            train_labels=d.train_y[:n].numpy(),
            val_images=grey(d.val_x),
            val_labels=d.val_y.numpy(),
        )
    return path


def spent(study: optuna.Study) -> int:
    return sum(TrialRecord.of(t).train_images or 0 for t in study.get_trials(deepcopy=False))


def load(url: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None


def search(url: str, name: str, data: Path, p: dict, seed: int, trials: int, halve: bool) -> None:
    argv = [sys.executable, "-m", "nas.search", "--study", name, "--storage", url]
    argv += ["--data", str(data), "--preset", "tiny", "--budget", p["budget"]]
    argv += ["--seed", str(seed), "--device", "cpu", "--trials", str(trials)]
    if halve:
        argv += ["--halving", str(p["eta"])]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"halving.py: {name}: nas.search failed:\n{out.stdout}{out.stderr}")


def run_searches(url: str, data: Path, p: dict, seed: int) -> None:
    """The seed's uniform search to its trials, then its halving search to as many images."""
    uniform = load(url, f"uniform-{seed}")
    done = 0 if uniform is None else len(uniform.trials)
    if done < p["trials"]:
        search(url, f"uniform-{seed}", data, p, seed, p["trials"] - done, halve=False)
    target = spent(optuna.load_study(study_name=f"uniform-{seed}", storage=url))
    while (h := load(url, f"halving-{seed}")) is None or spent(h) < target:
        search(url, f"halving-{seed}", data, p, seed, p["chunk"], halve=True)


def key(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def to_train(study: optuna.Study, extra: int, seed: int) -> list[dict]:
    """The configs of the study's front, and `extra` more of its trained networks."""
    front = [TrialRecord.of(t).config for t in pareto_front(study)]
    others = [
        r.config
        for r in map(TrialRecord.of, study.get_trials(deepcopy=False))
        if r.trained and r.config not in front
    ]
    rng = random.Random(seed)
    return front + rng.sample(others, min(extra, len(others)))


def final_runs(url: str, data: Path, p: dict, results: Path) -> dict[str, dict]:
    """Train every network a search put forward at `final`, once; returns them by config."""
    done = {}
    if results.exists():
        done = {key(r["config"]): r for r in map(json.loads, results.read_text().splitlines())}
    wanted: dict[str, dict] = {}
    for seed in range(p["seeds"]):
        for method in ("uniform", "halving"):
            study = optuna.load_study(study_name=f"{method}-{seed}", storage=url)
            for c in to_train(study, p["extra"], seed):
                wanted.setdefault(key(c), c)
    todo = [c for k, c in wanted.items() if k not in done]
    print(f"final: {len(wanted) - len(todo)} of {len(wanted)} networks trained before", flush=True)
    d = load_data(str(data))
    study = optuna.load_study(study_name="uniform-0", storage=url)
    budget = get_budget(StudyRecord.of(study).budget["name"])
    final = replace(budget, name="final", train_images=p["final_images"])
    for i, c in enumerate(todo, 1):
        t0 = time.perf_counter()
        r = train_and_evaluate(ArchConfig.from_dict(c), final, d.train, d.val)
        row = {
            "config": c,
            "accuracy": r.accuracy,
            "final_loss": r.final_loss,
            "train_images": r.train_images,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[key(c)] = row
        print(f"final {i}/{len(todo)}: {ArchConfig.from_dict(c).describe()} "
              f"val acc {r.accuracy:.4f} ({row['seconds']} s)", flush=True)  # fmt: skip
    return done


def interval(values: list[float]) -> dict[str, Any]:
    """Mean and 95 % t interval (none for a single value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": m, "ci95": None, "n": len(values)}
    h = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": m, "ci95": [m - h, m + h], "n": len(values)}


def judge(study: optuna.Study, finals: dict[str, dict], ref: tuple, cap: float) -> dict:
    """One search judged by the final training of its front's networks."""
    front = pareto_front(study)
    points = [(finals[key(TrialRecord.of(t).config)]["accuracy"], TrialRecord.of(t).mmacs)
              for t in front]  # fmt: skip
    searched = [(t.values[0], TrialRecord.of(t).mmacs) for t in front]
    capped = [i for i, (_, m) in enumerate(searched) if m <= cap]
    best = max(capped, key=lambda i: searched[i][0]) if capped else None
    return {
        "front": len(front),
        "hypervolume": hypervolume_history(sorted(points, key=lambda p: p[1]), ref)[-1],
        "knee_final_accuracy": points[knee_index(searched)][0],
        "cap_final_accuracy": None if best is None else points[best][0],
        "train_images": spent(study),
        "runs": len(study.trials),
    }


def fidelity(url: str, p: dict, finals: dict[str, dict]) -> dict[str, Any]:
    """Each cheap signal's rank agreement with the final accuracy, over networks."""
    signals: dict[str, dict[str, float]] = {}  # signal -> config key -> value
    for seed in range(p["seeds"]):
        for method in ("uniform", "halving"):
            study = optuna.load_study(study_name=f"{method}-{seed}", storage=url)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                r = TrialRecord.of(t)
                k = key(r.config) if r.config else ""
                if k not in finals or not r.trained:
                    continue
                signals.setdefault("MACs", {})[k] = r.mmacs
                if method == "uniform":
                    signals.setdefault("accuracy, whole budget", {})[k] = t.values[0]
                    signals.setdefault("-final training loss", {})[k] = -(r.final_loss or 0)
                else:
                    for rung, acc in enumerate(r.rung_accuracies):
                        signals.setdefault(f"accuracy, rung {rung}", {})[k] = acc
    out = {}
    for name, values in sorted(signals.items()):
        ks = sorted(values)
        x, y = [values[k] for k in ks], [finals[k]["accuracy"] for k in ks]
        out[name] = {
            "networks": len(ks),
            "kendall_tau": kendall_tau(x, y) if len(ks) > 2 else math.nan,
            "kendall_tau_95": bootstrap(kendall_tau, x, y) if len(ks) > 2 else [math.nan] * 2,
            "spearman_rho": spearman_rho(x, y) if len(ks) > 2 else math.nan,
            "spearman_rho_95": bootstrap(spearman_rho, x, y) if len(ks) > 2 else [math.nan] * 2,
        }
    return out


def analyse(url: str, p: dict, finals: dict[str, dict], cap: float | None) -> dict[str, Any]:
    space = StudyRecord.of(optuna.load_study(study_name="uniform-0", storage=url)).space
    ref = hypervolume_reference(space, None)  # the space as the searches resolved it
    if cap is None:
        cap = closed_form_mmacs(SearchSpace.from_dict(space).middle())
    per: dict[str, list[dict]] = {"uniform": [], "halving": []}
    for seed in range(p["seeds"]):
        for method in per:
            study = optuna.load_study(study_name=f"{method}-{seed}", storage=url)
            per[method].append(judge(study, finals, ref, cap))
    summary: dict[str, Any] = {}
    for metric in ("hypervolume", "knee_final_accuracy", "cap_final_accuracy", "train_images"):
        row = {}
        for m in per:  # a capped pick may find no network under the cap
            values = [r[metric] for r in per[m] if r[metric] is not None]
            row[m] = interval(values) if values else None
        pairs = [(h[metric], u[metric]) for h, u in zip(per["halving"], per["uniform"])]
        diffs = [h - u for h, u in pairs if h is not None and u is not None]
        row["halving_minus_uniform"] = interval(diffs) if diffs else None
        summary[metric] = row
    return {"protocol": p, "cap_mmacs": cap, "reference": ref, "per_seed": per,
            "summary": summary, "fidelity": fidelity(url, p, finals)}  # fmt: skip


def report(a: dict[str, Any]) -> str:
    lines = []
    for metric, row in a["summary"].items():
        words = []
        for m in ("uniform", "halving", "halving_minus_uniform"):
            v = row[m]
            if v:
                ci = "" if v["ci95"] is None else f" [{v['ci95'][0]:.4g}, {v['ci95'][1]:.4g}]"
                words.append(f"{m} {v['mean']:.4g}{ci}")
        lines.append(f"{metric}: " + "; ".join(words))
    for name, s in a["fidelity"].items():
        lo, hi = s["kendall_tau_95"]
        lines.append(f"fidelity, {name}: tau {s['kendall_tau']:.2f} [{lo:.2f}, {hi:.2f}], "
                     f"rho {s['spearman_rho']:.2f} over {s['networks']} networks")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="seconds per search: the machinery only")
    ap.add_argument("--work", default=str(ROOT / "benchmarks/results/halving-cpu"),
                    help="folder of the studies, the data subset and the final runs")  # fmt: skip
    ap.add_argument("--seeds", type=int, help="search seeds (default 3; --tiny 1)")
    ap.add_argument("--cap", type=float, help="MMACs cap of the capped pick (default: the "
                    "space's middle network's)")  # fmt: skip
    ap.add_argument("--out", help="write the analysis as JSON here")
    a = ap.parse_args(argv)
    p = protocol(a.tiny)
    if a.seeds:
        p["seeds"] = a.seeds
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{work / 'studies.db'}"
    data = write_subset(work, p["subset"])
    for seed in range(p["seeds"]):
        print(f"seed {seed}: searches", flush=True)
        run_searches(url, data, p, seed)
    finals = final_runs(url, data, p, work / "final.jsonl")
    analysis = analyse(url, p, finals, a.cap)
    print(report(analysis))
    if a.out:
        Path(a.out).write_text(json.dumps(analysis, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
