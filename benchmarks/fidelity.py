"""How well does a cheap budget rank architectures the way real training does?

A fixed list of architectures per preset (`benchmarks/fidelity-archs.json`: 24 sampled
uniformly from the preset's space with seed 0, the d2l chapter's network included) is
trained at each cheap budget (`short`, `long`) and at a `final` reference: the same
schedule shape (warm-up, then linear decay) for 15 epochs of the 50k training split,
scored on the 10k validation split. 15 epochs: the chapter's own run flattens by epoch
10 (loss 0.150 -> 0.137 over the last two), and a decaying schedule converges sooner, so
15 is past the point where ranks still move, at 3x the `long` cost (750k training images
against 250k) and 15x the `short` one. The first few architectures also run at 3 seeds,
for the seed noise.

Every finished run is one JSON line (architecture, budget, seed, device, accuracy,
seconds) appended to --results; a run already there is skipped, so the benchmark can be
completed in pieces over several runs on a GPU. The analysis (printed, and written as
JSON and a plotly page) gives for each cheap budget's accuracy and final training loss,
and for MACs and parameters as zero-training proxies (both read "larger ranks higher"):
Kendall tau and Spearman rho against `final`, each with a bootstrap 95% interval over
architectures, the overlap of the top quarter, the GPU seconds per trial; and the seed
noise per budget, pooled over the seeded architectures (sqrt of the dof-weighted mean
variance; the median of per-architecture stdevs would read ~14 % low at 3 seeds).
Results from different devices or torch versions are never mixed: the analysis takes
the rows of one (`--on DEVICE`, or the device just run), and refuses a mixture.

    python benchmarks/fidelity.py --preset d2l --results benchmarks/results/fidelity.jsonl
    python benchmarks/fidelity.py --analyse-only --results benchmarks/results/fidelity.jsonl
    python benchmarks/fidelity.py --tiny --results /tmp/f.jsonl   # CPU smoke test (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.arch.macs import closed_form_mmacs
from nas.arch.model import build_model, count_params
from nas.arch.space import PRESETS, SearchSpace
from nas.data.dataset import load_data
from nas.errors import DataError
from nas.results.front import kendall_tau, pooled_stdev, spearman_rho
from nas.training.budget import TrainBudget, get_budget
from nas.training.fit import pick_device, train_and_evaluate

ARCHS = Path(__file__).with_name("fidelity-archs.json")
PER_PRESET = 24
SEEDED = 4  # architectures (the first of the list) also trained at seeds 1 and 2
TINY = (3, 1)  # --tiny: the 3 smallest architectures, the first of them seeded
FINAL_EPOCHS = 15
CHEAP = ("short", "long")


def budgets(tiny: bool) -> dict[str, TrainBudget]:
    if tiny:  # seconds on a CPU: checks the machinery, ranks nothing
        smoke = get_budget("smoke")
        return {
            "short": replace(smoke, name="tiny-short", train_images=64, val_images=100),
            "long": replace(smoke, name="tiny-long", train_images=128, val_images=100),
            "final": replace(smoke, name="tiny-final", train_images=192, val_images=100),
        }
    final = replace(get_budget("short"), name="final", train_images=FINAL_EPOCHS * 50_000)
    return {"short": get_budget("short"), "long": get_budget("long"), "final": final}


def sample_uniform(space: SearchSpace, rng: random.Random) -> ArchConfig:
    k_lo, k_hi, k_step = space.growth_rate
    c_lo, c_hi = space.convs_per_block
    t_lo, t_hi, t_step = space.compression
    return space.config(
        rng.randrange(k_lo, k_hi + 1, k_step),
        tuple(rng.randint(c_lo, c_hi) for _ in range(space.num_blocks)),
        t_lo + t_step * rng.randint(0, round((t_hi - t_lo) / t_step)),
    )


def make_list() -> dict[str, list[dict]]:
    """24 uniform samples per preset (seed 0); d2l's list starts with the chapter's net."""
    out = {}
    for name in ("d2l", "cifar"):
        rng = random.Random(0)
        configs = [D2L_CHAPTER] if name == "d2l" else []
        while len(configs) < PER_PRESET:
            c = sample_uniform(PRESETS[name], rng)
            if c not in configs:
                configs.append(c)
        out[name] = [c.to_dict() for c in configs]
    return out


def bootstrap(stat, x: list[float], y: list[float], n: int = 2000) -> tuple[float, float]:
    """95% percentile interval of stat(x, y) over architectures resampled with replacement."""
    rng = random.Random(0)
    values = []
    for _ in range(n):
        idx = [rng.randrange(len(x)) for _ in x]
        v = stat([x[i] for i in idx], [y[i] for i in idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def top_quarter_overlap(x: list[float], y: list[float]) -> float:
    """Share of y's top quarter that x's top quarter also holds."""
    q = max(1, len(x) // 4)
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:q])  # noqa: E731
    return len(top(x) & top(y)) / q


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def device_name(device: torch.device) -> str:
    """The device as stored in each row (the GPU's name, or "cpu")."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run(
    preset: str,
    archs: list[dict],
    chosen: list[int],
    tiny: bool,
    results: Path,
    device: torch.device,
    source: str | None = None,
) -> None:
    """Train the chosen architectures (indices into archs) at every budget, the first
    SEEDED of them also at seeds 1 and 2, on `source` (nas.data.dataset; default Fashion-MNIST),
    each taking the data's channels, classes and normalisation; skip what `results`
    already holds."""
    data = load_data(source).to(device)
    name, content = device_name(device), data.fingerprint["content_sha256"]
    done = {
        (r["preset"], r["arch"], r["budget"], r["seed"], r["device"])
        for r in load_results(results)
        if r.get("data") == content
    }
    jobs = [(i, b, 0) for b in ("short", "long", "final") for i in chosen]
    seeded = chosen[: TINY[1] if tiny else SEEDED]
    jobs += [(i, b, s) for s in (1, 2) for b in ("short", "final") for i in seeded]
    bs = budgets(tiny)
    todo = [j for j in jobs if (preset, j[0], j[1], j[2], name) not in done]
    print(f"{preset}: {len(jobs) - len(todo)} of {len(jobs)} runs done before, {len(todo)} to go")
    for n, (i, b, seed) in enumerate(todo, 1):
        config = replace(ArchConfig.from_dict(archs[i]), **data.input_spec())
        budget = bs[b].with_seed(seed)
        r = train_and_evaluate(config, budget, data.train, data.val)
        row = {
            "preset": preset,
            "arch": i,
            "budget": b,
            "budget_name": budget.name,
            "seed": seed,
            "device": name,
            "data": content,  # the images' content hash (nas.data.dataset fingerprint)
            "val_accuracy": r.accuracy,
            "final_loss": r.final_loss,
            "train_seconds": r.train_seconds,
            "eval_seconds": r.eval_seconds,
            "mmacs": closed_form_mmacs(config),
            "params": count_params(build_model(config)),
            "torch": torch.__version__,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with results.open("a") as f:  # one line per finished run: a cut run keeps its work
            f.write(json.dumps(row) + "\n")
        print(
            f"[{n}/{len(todo)}] arch {i:>2} {b:<5} seed {seed}: val acc {r.accuracy:.4f} "
            f"in {r.train_seconds:.1f} s",
            flush=True,
        )


def analyse(rows: list[dict], preset: str) -> dict[str, Any]:
    """Rank agreement of each cheap signal with `final` (seed 0), and the seed noise."""
    rows = [r for r in rows if r["preset"] == preset]
    by = {(r["arch"], r["budget"], r["seed"]): r for r in rows}
    archs = sorted({r["arch"] for r in rows if r["budget"] == "final" and r["seed"] == 0})
    final = [by[(a, "final", 0)]["val_accuracy"] for a in archs]
    out: dict[str, Any] = {"preset": preset, "architectures": len(archs), "signals": {}}
    signals: dict[str, tuple[list[float], float | None]] = {}
    for b in CHEAP:
        have = [a for a in archs if (a, b, 0) in by]
        if len(have) == len(archs):
            accs = [by[(a, b, 0)]["val_accuracy"] for a in archs]
            secs = statistics.median(by[(a, b, 0)]["train_seconds"] for a in archs)
            signals[f"{b} accuracy"] = (accs, secs)
            # lower training loss = better: negate so that larger ranks higher
            signals[f"{b} -final loss"] = ([-by[(a, b, 0)]["final_loss"] for a in archs], secs)
    if archs:  # zero-training proxies: a larger network ranks higher, for both
        signals["MACs"] = ([by[(a, "final", 0)]["mmacs"] for a in archs], 0.0)
        signals["params"] = ([float(by[(a, "final", 0)]["params"]) for a in archs], 0.0)
    for name, (values, secs) in signals.items():
        if len(archs) < 3:
            break
        out["signals"][name] = {
            "kendall_tau": kendall_tau(values, final),
            "kendall_tau_95": bootstrap(kendall_tau, values, final),
            "spearman_rho": spearman_rho(values, final),
            "spearman_rho_95": bootstrap(spearman_rho, values, final),
            "top_quarter_overlap": top_quarter_overlap(values, final),
            "seconds_per_trial": secs,
        }
    noise = {}
    for b in ("short", "final"):
        groups = [
            [by[(a, b, s)]["val_accuracy"] for s in (0, 1, 2) if (a, b, s) in by] for a in archs
        ]
        groups = [g for g in groups if len(g) >= 2]
        pooled = pooled_stdev(groups)
        if pooled is not None:
            noise[b] = {
                "architectures": len(groups),
                "pooled_stdev": pooled[0],
                "dof": pooled[1],
                "seed_stdev": [statistics.stdev(g) for g in groups],
            }
    out["seed_noise"] = noise
    return out


def one_device(rows: list[dict], preset: str, on: str | None) -> list[dict]:
    """The preset's rows of one device and torch version: `on` names the device; without
    it, the rows must all come from one. Raises ValueError on a mixture."""
    rows = [r for r in rows if r["preset"] == preset and (on is None or r["device"] == on)]
    kinds = sorted({(r["device"], r.get("torch", "?"), r.get("data", "?")) for r in rows})
    if len(kinds) > 1:
        names = "; ".join(f"{d} (torch {t}, data {c})" for d, t, c in kinds)
        raise ValueError(
            f"results from {len(kinds)} devices, torch versions or datasets ({names}): their "
            "numbers are not comparable; analyse one with --on DEVICE (and one dataset per "
            "results file)"
        )
    return rows


def write_page(rows: list[dict], analysis: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    preset = analysis["preset"]
    by = {(r["arch"], r["budget"], r["seed"]): r for r in rows if r["preset"] == preset}
    archs = sorted({a for a, b, s in by if b == "final" and s == 0})
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cheap vs final", "tau vs seconds"))
    for b in CHEAP:
        have = [a for a in archs if (a, b, 0) in by]
        fig.add_trace(
            go.Scatter(
                x=[by[(a, "final", 0)]["val_accuracy"] for a in have],
                y=[by[(a, b, 0)]["val_accuracy"] for a in have],
                mode="markers",
                name=f"{b} budget",
                hovertext=[f"arch {a}" for a in have],
            ),
            row=1,
            col=1,
        )
    sig = {k: v for k, v in analysis["signals"].items() if k.endswith("accuracy")}
    fig.add_trace(
        go.Scatter(
            x=[v["seconds_per_trial"] for v in sig.values()],
            y=[v["kendall_tau"] for v in sig.values()],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [v["kendall_tau_95"][1] - v["kendall_tau"] for v in sig.values()],
                "arrayminus": [v["kendall_tau"] - v["kendall_tau_95"][0] for v in sig.values()],
            },
            text=list(sig),
            mode="markers+text",
            textposition="top center",
            name="Kendall tau (95% bootstrap)",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text=f"final ({FINAL_EPOCHS} epochs) val accuracy", row=1, col=1)
    fig.update_yaxes(title_text="cheap-budget val accuracy", row=1, col=1)
    fig.update_xaxes(title_text="training seconds per trial (median)", row=1, col=2)
    fig.update_yaxes(title_text="Kendall tau vs final", row=1, col=2)
    fig.update_layout(title=f"Proxy fidelity, {preset} preset", height=520)
    fig.write_html(path, include_plotlyjs=True)


def report(analysis: dict[str, Any]) -> str:
    lines = [f"{analysis['preset']}: {analysis['architectures']} architectures with a final run"]
    for name, s in analysis["signals"].items():
        lo, hi = s["kendall_tau_95"]
        rlo, rhi = s["spearman_rho_95"]
        lines.append(
            f"  {name:<18} tau {s['kendall_tau']:+.2f} [{lo:+.2f}, {hi:+.2f}]  rho "
            f"{s['spearman_rho']:+.2f} [{rlo:+.2f}, {rhi:+.2f}]  top-quarter overlap "
            f"{s['top_quarter_overlap']:.2f}  {s['seconds_per_trial']:.1f} s/trial"
        )
    for b, n in analysis["seed_noise"].items():
        lines.append(
            f"  seed stdev at {b}: {n['pooled_stdev']:.4f} pooled over {n['architectures']} "
            f"architectures ({n['dof']} degrees of freedom; per architecture up to "
            f"{max(n['seed_stdev']):.4f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=("d2l", "cifar"), default="d2l")
    p.add_argument("--results", help="JSON-lines file: appended, then read (required)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny budgets, 3 archs")
    p.add_argument("--analyse-only", action="store_true", help="no training; analyse --results")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", metavar="SOURCE", help="the images (as nas.search --data)")
    p.add_argument("--on", help="analyse the results of this device (a name as stored)")
    p.add_argument("--out", help="analysis JSON (and OUT.html, the plotly page)")
    p.add_argument("--make-list", action="store_true", help="(re)write fidelity-archs.json")
    a = p.parse_args(argv)
    if a.make_list:
        ARCHS.write_text(json.dumps(make_list(), indent=1) + "\n")
        print(f"wrote {ARCHS}")
        return 0
    if not a.results:
        p.error("--results is required")
    archs = json.loads(ARCHS.read_text())[a.preset]
    chosen = list(range(len(archs)))
    if a.tiny:  # the smallest few, so that the smoke run takes seconds on a CPU
        macs = [closed_form_mmacs(ArchConfig.from_dict(c)) for c in archs]
        chosen = sorted(chosen, key=macs.__getitem__)[: TINY[0]]
    results = Path(a.results)
    on = a.on
    if not a.analyse_only:
        device = pick_device(a.device)
        try:
            run(a.preset, archs, chosen, a.tiny, results, device, a.data)
        except DataError as e:
            p.error(str(e))
        on = on or device_name(device)
    try:
        rows = one_device(load_results(results), a.preset, on)
    except ValueError as e:
        p.error(str(e))
    analysis = analyse(rows, a.preset)
    print(report(analysis))
    if a.out:
        Path(a.out).write_text(json.dumps(analysis, indent=2) + "\n")
        write_page(rows, analysis, Path(a.out).with_suffix(".html"))
        print(f"wrote {a.out} and {Path(a.out).with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
