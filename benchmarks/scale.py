"""What a trial costs the search itself when the study is large (no training).

For each storage URL and each study size N: a study is filled with N finished trials of
the cifar space (real configs and MACs, made-up accuracies), then M more trials run
through exactly what a real trial does around its training: the sampler's ask (TPE,
multivariate, constant liar, as nas.search), sampling the config, the trial's user
attributes, the MAC constraint and tell. It prints the median seconds per trial, split
into ask+sample and attributes+tell; and the report's front + hypervolume on N trials.

    python benchmarks/scale.py --sizes 1000,5000 --storage sqlite:///tmp/s.db \
        --storage postgresql://nas@127.0.0.1/nas --out benchmarks/results/scale-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from nas.arch.macs import closed_form_mmacs
from nas.arch.space import PRESETS, params_of, sample
from nas.parallel.workers import make_sampler
from nas.results.front import hypervolume_history, hypervolume_reference, pareto_front
from nas.study.record import trial_attrs
from nas.study.storage import open_storage

SPACE = PRESETS["cifar"]


def random_config(rng: random.Random):
    k_lo, k_hi, k_step = SPACE.growth_rate
    t_lo, t_hi, t_step = SPACE.compression
    return SPACE.config(
        rng.randrange(k_lo, k_hi + 1, k_step),
        tuple(rng.randint(*SPACE.convs_per_block) for _ in range(SPACE.num_blocks)),
        t_lo + t_step * rng.randint(0, round((t_hi - t_lo) / t_step)),
    )


def fill(study: optuna.Study, n: int, seed: int) -> None:
    """n finished trials with the distributions nas.arch.space.sample declares."""
    rng = random.Random(seed)
    probe = optuna.trial.FixedTrial(params_of(random_config(rng)))
    sample(probe, SPACE)
    dists = probe.distributions
    batch = []
    for _ in range(n):
        config = random_config(rng)
        mmacs = closed_form_mmacs(config)
        batch.append(
            optuna.trial.create_trial(
                params=params_of(config),
                distributions=dists,
                values=[rng.uniform(0.85, 0.93), mmacs],
                user_attrs=trial_attrs(config=config.to_dict(), trained=True),
                system_attrs={"constraints": [mmacs - 1e9]},
            )
        )
    study.add_trials(batch)


def measure(url: str, n: int, m: int) -> dict[str, Any]:
    storage = open_storage(url)
    name = f"scale-{n}-{time.time_ns()}"
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=["maximize", "minimize"],
        sampler=make_sampler("tpe", 0),
    )
    t = time.perf_counter()
    fill(study, n, seed=n)
    fill_s = time.perf_counter() - t
    ask, tell = [], []
    for _ in range(m):
        t0 = time.perf_counter()
        trial = study.ask()
        config = sample(trial, SPACE)
        t1 = time.perf_counter()
        mmacs = closed_form_mmacs(config)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("trained", True)
        trial.set_constraint("mmacs_over_budget", mmacs - 1e9)
        study.tell(trial, (0.9, mmacs))
        ask.append(t1 - t0)
        tell.append(time.perf_counter() - t1)
    t = time.perf_counter()
    front = pareto_front(study)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    hv = hypervolume_history(
        ((tr.values[0], tr.values[1]) for tr in trials),
        hypervolume_reference(SPACE.to_dict(), None),
    )
    report_s = time.perf_counter() - t
    return {
        "storage": url.split(":")[0],
        "trials_in_study": n,
        "trials_measured": m,
        "fill_seconds": fill_s,
        "median_ask_and_sample_seconds": statistics.median(ask),
        "median_attrs_and_tell_seconds": statistics.median(tell),
        "median_per_trial_seconds": statistics.median(a + b for a, b in zip(ask, tell)),
        "front_and_hypervolume_seconds": report_s,
        "front_size": len(front),
        "final_hypervolume": hv[-1],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,5000", help="study sizes N, comma-separated")
    p.add_argument("--measure", type=int, default=10, help="trials M timed at each size")
    p.add_argument("--storage", action="append", help="storage URL (repeatable)")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    urls = a.storage or ["sqlite:///scale.db"]
    rows = []
    for url in urls:
        for n in (int(x) for x in a.sizes.split(",")):
            r = measure(url, n, a.measure)
            rows.append(r)
            print(
                f"{r['storage']:<11} N={n:>5}: per trial {r['median_per_trial_seconds']:.3f} s "
                f"(ask+sample {r['median_ask_and_sample_seconds']:.3f}, attrs+tell "
                f"{r['median_attrs_and_tell_seconds']:.3f}); front+hypervolume "
                f"{r['front_and_hypervolume_seconds']:.3f} s; filled in {r['fill_seconds']:.0f} s",
                flush=True,
            )
    if a.out:
        meta = {"python": platform.python_version(), "optuna": optuna.__version__}
        Path(a.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
