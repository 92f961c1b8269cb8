"""Run a study's trials in one or more persistent worker processes on this machine.

Each worker loads Fashion-MNIST onto its device once, keeps its CUDA context for all its
trials, and asks the shared study (through its storage) for one trial at a time. N
workers on one machine share a counter of trials still to run, so a run of --trials T
makes exactly T trials whatever their durations; workers on other machines (same
storage, e.g. PostgreSQL) each bring their own --trials. Several GPUs: worker i uses GPU
i mod count. The sampler of each worker is seeded differently (seed, worker index, and
the trials already in the study), so workers do not replay each other's draws; TPE's
constant liar keeps them off each other's running trials.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch

from nas.budget import TrainBudget
from nas.config import ArchConfig
from nas.data import FashionMNIST, load_fashion_mnist
from nas.objective import CATCH, Objective
from nas.space import SearchSpace
from nas.storage import open_storage

__all__ = [
    "SAMPLERS",
    "WorkerSpec",
    "make_sampler",
    "run_workers",
    "trial_line",
    "trial_loop",
]

SAMPLERS = ("tpe", "nsga2", "random")


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs (picklable)."""

    storage: str
    study: str
    space: SearchSpace
    budget: TrainBudget
    sampler: str
    seed: int
    device: str  # "cpu", "cuda" or "cuda:N"
    data_dir: str | None
    max_mmacs: float | None
    workers: int  # how many workers share this machine


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # constant_liar: parallel workers do not all sample the same point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


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


def worker_device(spec: WorkerSpec, index: int) -> torch.device:
    if spec.device == "cuda":
        return torch.device(f"cuda:{index % torch.cuda.device_count()}")
    return torch.device(spec.device)


def trial_loop(
    spec: WorkerSpec,
    index: int,
    claim: Callable[[], bool],
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
    data: FashionMNIST | None = None,
) -> None:
    """Run trials one at a time while claim() grants another (data: already loaded)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = worker_device(spec, index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if spec.workers > 1:  # CPU work (fvcore tracing, building) must not oversubscribe cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.workers))
    data = (data or load_fashion_mnist(spec.data_dir)).to(device)
    storage = open_storage(spec.storage)
    existing = len(optuna.load_study(study_name=spec.study, storage=storage).trials)
    sampler = make_sampler(spec.sampler, spec.seed + existing + 7919 * index)
    study = optuna.load_study(study_name=spec.study, storage=storage, sampler=sampler)
    objective = Objective(spec.space, spec.budget, data, spec.max_mmacs)
    while claim():
        study.optimize(objective, n_trials=1, catch=CATCH, callbacks=[on_trial])


def _child(spec: WorkerSpec, index: int, remaining) -> None:  # noqa: ANN001
    def claim() -> bool:
        with remaining.get_lock():
            if remaining.value <= 0:
                return False
            remaining.value -= 1
            return True

    def on_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        print(f"[w{index}] {trial_line(t)}", flush=True)

    try:
        trial_loop(spec, index, claim, on_trial)
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(
    spec: WorkerSpec,
    trials: int,
    progress: Callable[[], None],
) -> list[int]:
    """Start spec.workers processes for `trials` trials in all; wait; return exit codes.

    progress() is called about twice a second while they run (e.g. to poll the study).
    """
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    remaining = ctx.Value("i", trials)
    procs = [
        ctx.Process(target=_child, args=(spec, i, remaining), name=f"nas-worker-{i}")
        for i in range(spec.workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.5 / len(procs))
            progress()
    except KeyboardInterrupt:
        for p in procs:
            p.join()
        raise
    progress()
    return [p.exitcode if p.exitcode is not None else -1 for p in procs]
