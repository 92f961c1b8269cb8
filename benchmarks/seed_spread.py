"""How much does one architecture's short-run accuracy move with the training seed?

Trains the d2l chapter's network (or --config) with the `short` budget once per seed,
and the same with the d2l chapter's own recipe at the same number of images (plain SGD,
constant LR 0.1, no weight decay), and prints the spread of validation accuracy for
both. A search can only rank architectures whose accuracy differs by more than this.

    python benchmarks/seed_spread.py --seeds 5 --out benchmarks/results/seed_spread.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from nas.arch.config import D2L_CHAPTER, load_config_file
from nas.data.dataset import load_data
from nas.train import RECIPES
from nas.training.budget import get_budget
from nas.training.fit import pick_device, train_and_evaluate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="architecture JSON (default: the d2l chapter's network)")
    p.add_argument("--budget", default="short")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", metavar="SOURCE", help="the images (as nas.search --data)")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    data = load_data(a.data).to(device)
    config = load_config_file(a.config) if a.config else D2L_CHAPTER
    config = replace(config, **data.input_spec())  # the data's channels, classes, statistics
    ours = get_budget(a.budget)
    d2l = replace(ours, name="d2l-recipe", **RECIPES["d2l"])
    results = {}
    for budget in (ours, d2l):
        runs = []
        for seed in range(a.seeds):
            r = train_and_evaluate(config, budget.with_seed(seed), data.train, data.val)
            runs.append(r)
            print(
                f"{budget.name:>10} seed {seed}: val acc {r.accuracy:.4f}  "
                f"loss {r.final_loss:.4f}  {r.train_seconds:.1f} s  "
                f"{r.images_per_second:,.0f} img/s",
                flush=True,
            )
        accs = [r.accuracy for r in runs]
        results[budget.name] = {
            "budget": budget.to_dict(),
            "accuracies": accs,
            "mean": statistics.mean(accs),
            "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "range": max(accs) - min(accs),
            "train_seconds": [r.train_seconds for r in runs],
            "images_per_second": [r.images_per_second for r in runs],
        }
    print()
    for name, r in results.items():
        print(
            f"{name:>10}: mean {r['mean']:.4f}  stdev {r['stdev']:.4f}  "
            f"range {r['range']:.4f} over {a.seeds} seeds"
        )
    if a.out:
        record = {
            "config": config.to_dict(),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": results,
        }
        Path(a.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
