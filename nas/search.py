"""`python -m nas.search`: run (or continue) a DenseNet architecture search.

Parses and checks every argument before touching data or storage, loads Fashion-MNIST
onto the device once, opens or creates the study, enqueues the d2l chapter's network as
the reference (when the space contains it), and runs the trials with a progress bar and
one line per trial.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import optuna
from tqdm import tqdm

from nas.budget import BUDGETS, TrainBudget, get_budget
from nas.cli import UsageError, make_parser, run_cli
from nas.config import ArchConfig
from nas.data import DataError, load_fashion_mnist
from nas.objective import CATCH, Objective
from nas.space import PRESETS, SearchSpace, load_space_file, parse_range, reference_params
from nas.storage import check_study_name, default_storage_url, open_or_create_study, open_storage
from nas.train import pick_device

__all__ = ["SearchArgs", "main", "make_sampler"]

SAMPLERS = ("tpe", "nsga2", "random")

EPILOG = """\
objectives: validation accuracy (maximise) on a fixed 10k split of the training set, and
  MACs (fvcore) in millions at batch 1 (minimise); fvcore counts one multiply-add as one
  flop, so --max-mflops is in those units too.
presets:
  d2l    the d2l chapter's layout: 4 dense blocks, 7x7 stem, 96x96 input (default)
  cifar  DenseNet-BC: 3 dense blocks with bottlenecks, 3x3 stem, native 28x28 input
budgets: smoke (seconds per trial on a CPU, tests and demos), short (about one epoch,
  for a GPU; default), long (five epochs).
examples:
  python -m nas.search --trials 100
  python -m nas.search --trials 3 --budget smoke --study demo
  python -m nas.search --preset cifar --growth-rate 8:24:4 --convs 2:8 --max-mflops 50
"""


@dataclass(frozen=True)
class SearchArgs:
    trials: int
    study: str
    storage: str
    space: SearchSpace
    budget: TrainBudget
    sampler: str
    seed: int
    device: str
    data_dir: str | None
    max_mmacs: float | None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "nas.search",
        "Search DenseNet architectures (growth rate, convs per block, compression) for the "
        "best validation accuracy per MAC on Fashion-MNIST. Re-running continues the study.",
        EPILOG,
    )
    p.add_argument("--trials", type=_positive_int, default=100, help="trials to run (default 100)")
    p.add_argument("--study", default="densenet", help="study name (default densenet)")
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///studies/STUDY.db; postgresql://... works)",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="d2l", help="search space preset")
    p.add_argument("--budget", choices=list(BUDGETS), default="short", help="train budget")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler")
    p.add_argument("--seed", type=_non_negative_int, default=0, help="sampler seed")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX .gz files")
    p.add_argument(
        "--max-mflops",
        type=_positive_float,
        metavar="M",
        help="MACs (fvcore) budget in millions: larger networks are infeasible, not trained",
    )
    g = p.add_argument_group("search-space overrides (after the preset and --space)")
    g.add_argument("--space", metavar="FILE", help="TOML file of search-space overrides")
    g.add_argument("--growth-rate", metavar="LO:HI[:STEP]", help="range of k")
    g.add_argument("--convs", metavar="LO:HI", help="range of conv blocks per dense block")
    g.add_argument("--compression", metavar="LO:HI:STEP", help="range of theta, in (0, 1]")
    return p


def parse_args(argv: list[str] | None) -> SearchArgs:
    a = build_parser().parse_args(argv)
    space = PRESETS[a.preset]
    if a.space:
        space = space.override(load_space_file(a.space), a.space)
    flags: dict[str, Any] = {}
    if a.growth_rate:
        flags["growth_rate"] = parse_range(a.growth_rate, integer=True)
    if a.convs:
        flags["convs_per_block"] = parse_range(a.convs, integer=True)
    if a.compression:
        flags["compression"] = parse_range(a.compression, integer=False)
    if flags:
        space = space.override(flags, "command line")
    return SearchArgs(
        trials=a.trials,
        study=check_study_name(a.study),
        storage=a.storage or default_storage_url(a.study),
        space=space,
        budget=get_budget(a.budget),
        sampler=a.sampler,
        seed=a.seed,
        device=a.device,
        data_dir=a.data_dir,
        max_mmacs=a.max_mflops,
    )


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: parallel workers do not all sample the same point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def trial_line(t: optuna.trial.FrozenTrial) -> str:
    """One readable line per finished trial."""
    attrs = t.user_attrs
    cfg = attrs.get("config")
    desc = ArchConfig.from_dict(cfg).describe() if cfg else "?"
    ref = " (d2l chapter)" if attrs.get("reference") else ""
    head = f"trial {t.number:>4}  {desc}{ref}"
    if t.state == optuna.trial.TrialState.COMPLETE and attrs.get("trained") is False:
        mmacs = t.values[1]
        return f"{head}  {mmacs:,.1f} MMACs (fvcore)  over budget, not trained"
    if t.state == optuna.trial.TrialState.COMPLETE:
        acc, mmacs = t.values
        secs = (t.datetime_complete - t.datetime_start).total_seconds()
        return (
            f"{head}  acc {acc:.4f}  {mmacs:,.1f} MMACs (fvcore)  {secs:.1f} s  "
            f"({attrs.get('images_per_second', 0):,.0f} img/s)"
        )
    reason = attrs.get("fail_reason", "see log")
    return f"{head}  {t.state.name.lower()}: {reason}"


def run_search(args: SearchArgs) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        data = load_fashion_mnist(args.data_dir).to(device)
    except DataError as e:
        raise UsageError(str(e)) from None
    storage = open_storage(args.storage)
    # A resumed run must not replay the first run's random draws: offset the seed by the
    # trials already there (deterministic for a given study state).
    existing = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    sampler = make_sampler(args.sampler, args.seed + existing.get(args.study, 0))
    study = open_or_create_study(storage, args.study, sampler, args.budget, args.space.to_dict())
    ref = reference_params(args.space)
    if ref is not None:
        study.enqueue_trial(ref, user_attrs={"reference": "d2l chapter"}, skip_if_exists=True)

    objective = Objective(args.space, args.budget, data, args.max_mmacs)
    finished = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    done_before = len(study.get_trials(deepcopy=False, states=finished))
    print(
        f"study {args.study!r} ({done_before} finished trials so far) in {args.storage}\n"
        f"preset {args.space.preset}, budget {args.budget.name} "
        f"({args.budget.train_images:,} train images, {args.budget.val_images:,} val), "
        f"sampler {args.sampler}, device {device}",
        flush=True,
    )
    # disable=None: a bar on a terminal, none in a log file (the per-trial lines remain).
    bar = tqdm(total=args.trials, unit="trial", dynamic_ncols=True, file=sys.stderr, disable=None)
    failures = 0

    def after_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        nonlocal failures
        failures += t.state != optuna.trial.TrialState.COMPLETE
        bar.write(trial_line(t), file=sys.stdout)
        bar.set_postfix(failed=failures)
        bar.update(1)
        sys.stdout.flush()

    t0 = time.perf_counter()
    try:
        study.optimize(objective, n_trials=args.trials, catch=CATCH, callbacks=[after_trial])
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    front = study.best_trials
    print(
        f"{args.trials} trials in {elapsed:.1f} s ({failures} failed); "
        f"Pareto front: {len(front)} trials "
        f"({', '.join(str(t.number) for t in sorted(front, key=lambda t: t.values[1]))})"
    )
    return study


def _run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    run_search(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.search", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
