"""Run a study's trials in one or more persistent worker processes on this machine.

Each worker loads the data onto its device once, keeps its CUDA context for all its
trials, and asks the shared study (through its storage) for one trial at a time. N
workers on one machine share a counter of trials still to run, so a run of --trials T
makes exactly T trials whatever their durations; workers on other machines (same
storage, e.g. PostgreSQL) each bring their own --trials. Several GPUs: worker i uses GPU
i mod count. With --seed, every sampler is reseeded before each trial from the seed and
the trial's number (unique in the study), so runs are reproducible and no two workers or
hosts draw alike; without it, each worker's sampler is seeded from its host, process
and index. TPE's constant liar keeps workers off each other's running trials. Each
worker runs --concurrency trials at once in threads (nas.parallel.threads).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from typing import Any

import optuna
import torch

from nas.arch.config import ArchConfig
from nas.arch.space import SearchSpace
from nas.data.dataset import Dataset, load_data
from nas.errors import Interrupted, StopFlag, interruption, stop_signals
from nas.parallel.promotion import promote
from nas.parallel.threads import run_concurrently
from nas.study.metrics import COSTS, DEFAULT_OBJECTIVES, SHIPPED_KEYS, Limits
from nas.study.objective import CATCH, Objective
from nas.study.patience import DEFAULT_PATIENCE_S
from nas.study.record import TrialRecord
from nas.study.rungs import Halving
from nas.study.storage import finished_elsewhere, open_storage
from nas.training.budget import TrainBudget

__all__ = [
    "SAMPLERS",
    "WorkerSpec",
    "make_sampler",
    "run_workers",
    "Tally",
    "times_gpu_latency",
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
    seed: int | None
    device: str  # "cpu", "cuda" or "cuda:N"
    data_dir: str | None  # Fashion-MNIST's folder (--data-dir)
    workers: int  # how many workers share this machine
    heartbeat: int  # seconds between heartbeats of a running trial (nas.study.storage)
    storage_patience: float = DEFAULT_PATIENCE_S  # seconds an outage is waited out
    concurrency: int = 1  # trials at once in each worker, in threads (nas.parallel.threads)
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES  # nas.study.metrics, accuracy first
    limits: Limits = field(default_factory=Limits)  # the cost limits (--max-*)
    data: str | None = None  # --data: the source nas.data.dataset.load_data reads (None: default)
    skip_bad_images: bool = False  # --skip-bad-images: a folder's unreadable images left out
    halving: Halving | None = None  # --halving: successive halving's rungs (nas.study.rungs)


def times_gpu_latency(spec: WorkerSpec) -> bool:
    """GPU latency is an objective or a cost limit of this search."""
    return "latency-gpu" in spec.objectives or "latency_gpu" in spec.limits.needs()


class _TrialSeeded:
    """Mixin for an Optuna sampler: before each trial its random streams are reseeded from
    --seed and the trial's number. Trial numbers are unique in a study, so processes and
    hosts that share it with one --seed never repeat each other's draws, and a run with a
    given --seed draws the same as any other run whose trials got the same numbers. (It
    sets Optuna's private `_rng` and `_random_sampler`, present in Optuna 5.)"""

    nas_seed: int

    _seeded_for: int | None = None  # the trial the streams were last reseeded for

    def _reseed(self, trial: optuna.trial.FrozenTrial) -> None:
        # At the trial's first draw, not in before_trial: trials running side by side in
        # one process (--concurrency) sample one at a time, each from its own seed.
        if self._seeded_for == trial.number:
            return
        self._seeded_for = trial.number
        seed = trial_seed(self.nas_seed, trial.number)
        self._rng.rng.seed(seed)  # type: ignore[attr-defined]
        inner = getattr(self, "_random_sampler", None)  # TPE's start-up, NSGA-II's mutation
        if inner is not None:
            inner._rng.rng.seed(seed)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict
    ) -> dict[str, Any]:
        self._reseed(trial)
        return super().sample_relative(study, trial, search_space)  # type: ignore[misc]

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        self._reseed(trial)
        return super().sample_independent(  # type: ignore[misc]
            study, trial, param_name, param_distribution
        )


def trial_seed(seed: int, number: int) -> int:
    text = f"{seed}:{number}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def make_sampler(
    name: str, seed: int | None, per_trial: bool = False
) -> optuna.samplers.BaseSampler:
    """The sampler `name`, seeded by `seed`; per_trial: reseeded before every trial from
    (seed, trial number) (what --seed means, see _TrialSeeded)."""
    if name == "tpe":
        # constant_liar: parallel workers do not all sample the same point.
        cls, kwargs = optuna.samplers.TPESampler, {"multivariate": True, "constant_liar": True}
    elif name == "nsga2":
        cls, kwargs = optuna.samplers.NSGAIISampler, {}
    elif name == "random":
        cls, kwargs = optuna.samplers.RandomSampler, {}
    else:
        raise ValueError(f"unknown sampler {name!r}")
    if not per_trial or seed is None:
        return cls(seed=seed, **kwargs)
    sampler = type(f"TrialSeeded{cls.__name__}", (_TrialSeeded, cls), {})(seed=seed, **kwargs)
    sampler.nas_seed = seed
    return sampler


def trial_line(t: optuna.trial.FrozenTrial) -> str:
    """One readable line per finished trial."""
    r = TrialRecord.of(t)
    desc = ArchConfig.from_dict(r.config).describe() if r.config else "?"
    ref = " (d2l chapter)" if r.reference else ""
    rung = "" if r.rung is None else f" rung {r.rung}"
    head = f"trial {t.number:>4}{rung}  {desc}{ref}"
    if t.state == optuna.trial.TrialState.PRUNED and r.duplicate_of is not None:
        return f"{head}  trial {r.duplicate_of} takes this network up a rung: not trained"
    if t.state != optuna.trial.TrialState.COMPLETE:
        return f"{head}  {t.state.name.lower()}: {r.fail_reason or 'see log'}"
    acc = t.values[0]
    if r.duplicate_of is not None:
        return (
            f"{head}  val acc {acc:.4f}  {cost_words(r)}  the network of trial "
            f"{r.duplicate_of}: its values, not trained again"
        )
    over = r.over_budget
    words = [COSTS[k].limit.words for k in over if COSTS[k].limit]
    budgets = " and ".join(words) + (" budgets" if over[1:] else " budget")
    if not r.trained:
        excess = t.constraints.get("mmacs_over_budget") if "macs" in over else None
        limit = None if excess is None else r.mmacs - excess
        return f"{head}  {cost_words(r, limit)}  over the {budgets}, not trained"
    secs = (t.datetime_complete - t.datetime_start).total_seconds()
    tail = f"; over the {budgets}" if over else ""
    return (
        f"{head}  val acc {acc:.4f}  {cost_words(r)}  "
        f"train {r.train_seconds or 0:.1f} s at "
        f"{r.images_per_second or 0:,.0f} img/s, whole trial {secs:.1f} s{tail}"
    )


def cost_words(r: TrialRecord, mac_limit: float | None = None) -> str:
    """'70.2 MMACs (fvcore), 0.41 M params, CPU 3.10 ms' and what else was measured;
    mac_limit: the MAC limit a network is over, which its MACs are shown above."""
    words = [
        m.shown.format(r.costs[key]["value"]) + _steadiness(r.costs[key]) + _shipped(r, key)
        for key, m in COSTS.items()
        if m.shown and key in r.costs
    ]
    if mac_limit is not None:
        words[0] = f"{r.mmacs:,.{_decimals_above(r.mmacs, mac_limit)}f} MMACs (fvcore)"
    return ", ".join(words)


def _steadiness(cost: dict) -> str:
    """' (spread 3%)' after a timed cost: its runs' quartiles apart, over the median;
    ', noisy' where they stayed wider than nas.training.measure.WIDE after re-timing."""
    if "spread" not in cost:
        return ""
    noisy = ", noisy" if cost.get("noisy") else ""
    return f" (spread {cost['spread']:.0%}{noisy})"


def _shipped(r: TrialRecord, key: str) -> str:
    """', as shipped 1.9 ms' where the network was also timed as shipped (a budget judges
    that figure: nas.study.metrics.judged_value)."""
    entry = r.costs.get(SHIPPED_KEYS.get(key, ""))
    if entry is None:
        return ""
    return f", as shipped {entry['value']:.2f} ms" + _steadiness(entry)


def _decimals_above(value: float, limit: float) -> int:
    """The fewest decimals (1 to 6: whole MACs) at which `value` still reads above `limit`:
    7.000012 over a limit of 7 is 7.00001, not 7.0."""
    for d in range(1, 6):
        if round(value, d) > limit:
            return d
    return 6


def worker_seed(index: int, existing: int) -> int:
    """Without --seed: each worker's own sampler stream, from this host, this process,
    the worker index and the number of trials already in the study, so that workers of
    one run, resumed runs and processes on several machines do not replay each other."""
    text = f"{socket.gethostname()}:{os.getpid()}:{index}:{existing}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def worker_device(spec: WorkerSpec, index: int) -> torch.device:
    if spec.device == "cuda":
        return torch.device(f"cuda:{index % torch.cuda.device_count()}")
    return torch.device(spec.device)


def trial_loop(
    spec: WorkerSpec,
    index: int,
    claim: Callable[[], bool],
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
    data: Dataset | None = None,
) -> None:
    """Run trials while claim() grants another, spec.concurrency at a time (data: already
    loaded). claim and on_trial are called from the trial threads."""
    # ERROR: a failed trial is reported in its own line, not with Optuna's traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    device = worker_device(spec, index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if spec.workers > 1:  # CPU work (fvcore tracing, building) must not oversubscribe cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.workers))
    data = (data or load_data(spec.data, spec.data_dir, skip_bad_images=spec.skip_bad_images)).to(
        device
    )
    label = f"[w{index}] " if spec.workers > 1 else ""
    storage = open_storage(
        spec.storage,
        heartbeat=spec.heartbeat,
        patience=spec.storage_patience,
        say=lambda line: print(f"{label}{line}", file=sys.stderr, flush=True),
    )
    study = optuna.load_study(study_name=spec.study, storage=storage)
    if spec.seed is None:
        study.sampler = make_sampler(spec.sampler, worker_seed(index, len(study.trials)))
    else:  # reproducible, and distinct across workers and hosts: by trial number
        study.sampler = make_sampler(spec.sampler, spec.seed, per_trial=True)
    stop = StopFlag()
    # GPU latency and throughput are timed where the search asks for them (an objective
    # or a budget), which needs the GPU to one trial at a time (nas.search refuses more):
    # a search that does not ask spends the same per trial at any --concurrency
    alone = device.type == "cuda" and spec.concurrency == 1 and spec.workers == 1
    alone = alone and times_gpu_latency(spec)
    objective = Objective(
        spec.space,
        spec.budget,
        data,
        label=label,
        stop=stop,
        objectives=spec.objectives,
        limits=spec.limits,
        gpu_timing=alone,
        beside=spec.workers * spec.concurrency,
        halving=spec.halving,
    )

    def one_slot(_slot: int) -> None:
        while not stop.is_set() and claim():
            if spec.halving is not None:  # the trial it asks for next: this promotion
                promote(study, spec.halving)
            try:
                study.optimize(objective, n_trials=1, catch=CATCH, callbacks=[on_trial])
            except Exception as e:
                # Another worker finished this trial meanwhile (it judged the heartbeat
                # stale): that is its business, not a reason for this worker to die.
                # (Optuna 5's _run_trial raises AssertionError from its `finally` when the
                # tell was refused so: the refusal is in the chain.)
                finished = finished_elsewhere(e)
                if finished is None:
                    raise
                print(
                    f"{label}a trial this worker ran was finished by another one ({finished}); "
                    "its result is dropped",
                    file=sys.stderr,
                    flush=True,
                )

    # Trials of a killed worker become failed, each with its retry queued, here, before any
    # slot asks for a trial: Optuna does it at the start of every trial too, but with K
    # slots one slot could ask while another is still queueing the retries, and run a new
    # trial in a retry's place (left WAITING at the end of the run).
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9: noise to a user
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    run_concurrently(spec.concurrency, device, one_slot, stop)


@dataclass
class Tally:
    """This run's finished trials, by what became of them."""

    done: int = 0
    failed: int = 0
    duplicates: int = 0  # repeating a trained network (its values) or a promotion: not trained
    trained: int = 0
    eager: int = 0  # trained eagerly on a GPU, because CUDA graphs were off (nas.training.gpu)
    images: int = 0  # training images drawn by the trained trials

    def count(self, t: optuna.trial.FrozenTrial) -> str | None:
        """Count a finished trial. Returns a warning line for the run's first trial trained
        eagerly because CUDA graphs were off, else None."""
        self.done += 1
        r = TrialRecord.of(t)
        if t.state == optuna.trial.TrialState.PRUNED and r.duplicate_of is not None:
            self.duplicates += 1  # a promotion another trial makes (nas.parallel.promotion)
        elif t.state != optuna.trial.TrialState.COMPLETE:
            self.failed += 1
        elif r.duplicate_of is not None:
            self.duplicates += 1
        elif r.trained:
            self.trained += 1
            self.images += r.train_images or 0
            mode = r.step_mode
            if mode.startswith("eager: capture") or mode.startswith("eager: cannot"):
                self.eager += 1
                if self.eager == 1:
                    return (
                        f"warning: trial {t.number} trained eagerly, CUDA graphs are off in "
                        f"this process ({mode.removeprefix('eager: ')}); the search goes on, "
                        "slower"
                    )
        return None


def _child(spec: WorkerSpec, index: int, remaining, tally) -> None:  # noqa: ANN001
    def claim() -> bool:
        with remaining.get_lock():
            if remaining.value <= 0:
                return False
            remaining.value -= 1
            return True

    def on_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        with tally.get_lock():  # the run's tally, shared by the workers as an array
            now = Tally(*tally)
            warning = now.count(t)
            tally[:] = astuple(now)
        print(f"[w{index}] {trial_line(t)}", flush=True)
        if warning:
            print(f"[w{index}] {warning}", flush=True)

    try:
        with stop_signals():
            trial_loop(spec, index, claim, on_trial)
    except KeyboardInterrupt as e:
        sys.exit(interruption(e)[1])


def run_workers(
    spec: WorkerSpec,
    trials: int,
    progress: Callable[[Tally], None],
) -> list[int]:
    """Start spec.workers processes for `trials` trials in all; wait; return exit codes.
    progress(tally) is called about twice a second with this run's trial counts."""
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    remaining, tally = ctx.Value("i", trials), ctx.Array("i", len(astuple(Tally())))
    procs = [
        ctx.Process(target=_child, args=(spec, i, remaining, tally), name=f"nas-worker-{i}")
        for i in range(spec.workers)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            for p in procs:
                p.join(timeout=0.5 / len(procs))
            progress(Tally(*tally))
    except KeyboardInterrupt as e:  # Ctrl-C reaches the workers too; a kill PID does not
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)
        for p in procs:
            p.join()
        raise
    progress(Tally(*tally))
    return [p.exitcode if p.exitcode is not None else -1 for p in procs]
