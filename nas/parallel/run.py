"""One search run: check everything, load the data, open or create the study, run the
trials (in this process or in worker processes) with a progress bar and a line per
trial, and print the summary. nas.search parses the command line into a SearchArgs; each
task of a SLURM job array (nas.parallel.slurm) runs the same."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
from tqdm import tqdm

from nas.arch.config import D2L_CHAPTER
from nas.arch.macs import closed_form_mmacs
from nas.arch.space import SearchSpace, reference_params
from nas.data.dataset import DEFAULT_SOURCE, Dataset, default_augment, describe, load_data
from nas.errors import ConfigError, DataError, UsageError
from nas.parallel.threads import GpuMonitor
from nas.parallel.workers import (
    Tally,
    WorkerSpec,
    make_sampler,
    run_workers,
    times_gpu_latency,
    trial_line,
    trial_loop,
)
from nas.results.front import pareto_front, why_no_front
from nas.study import record
from nas.study.metrics import LIMIT_NAMES, Limits, metric_names
from nas.study.record import StudyRecord, TrialRecord
from nas.study.rungs import Halving, rung_counts
from nas.study.storage import (
    connection_note,
    default_storage_url,
    open_or_create_study,
    open_storage,
    update_limits,
)
from nas.study.urls import public_url
from nas.training.budget import MIN_STEPS, TrainBudget
from nas.training.fit import pick_device, train_and_evaluate
from nas.training.step import precision

__all__ = [
    "CANDIDATE_CONCURRENCY",
    "CONCURRENCY_PER_GPU",
    "FAR_MMACS",
    "MAX_CONCURRENCY",
    "SearchArgs",
    "WORKERS_PER_GPU",
    "budget_notes",
    "check_gpu_costs",
    "default_concurrency",
    "default_workers",
    "for_data",
    "preflight",
    "reference_interrupted",
    "run_search",
    "continued",
    "existing_study",
]

# Trial processes per GPU for --workers auto. Measured on an H200 (benchmarks/results/
# throughput-H200.json, 8 short cifar trials): 1 worker 8.9 trials/min, 4 workers 9.2.
# With the step replayed as a CUDA graph, processes only time-slice the GPU (no MPS), so
# more than one buys nothing and adds ~6 s of CPU contention per trial.
WORKERS_PER_GPU = 1


# Trials at once per worker on a GPU for --concurrency auto (threads, nas.parallel.threads).
# 1 until measured: K > 1 has not yet been measured on a GPU, and a default must be a
# path that has run there. benchmarks/throughput.py compares K=1 with
# CANDIDATE_CONCURRENCY (one short cifar trial used ~3% of an H200's bf16 peak and spent
# 1.73 s of each trial off the GPU, so 4 is the first candidate); this figure follows it.
CONCURRENCY_PER_GPU = 1


CANDIDATE_CONCURRENCY = 4


MAX_CONCURRENCY = 16  # a trial slot holds 2 streams (nas.training.gpu) of PyTorch's pool of 32


@dataclass(frozen=True)
class SearchArgs:
    trials: int  # trials this run adds (other machines may add theirs)
    spec: WorkerSpec  # the rest; spec.workers and spec.concurrency 0, spec.device "auto":
    # chosen from the device
    augment_auto: bool = False  # --augment auto: chosen from the data's channels
    size_given: bool = False  # --image-size, or image_size in --space
    # the settings the command line gave (nas.search.GIVEN names; None: all of them): a
    # continued study takes its own for the others (continued)
    given: frozenset[str] | None = None


def default_concurrency(device: torch.device) -> int:
    return CONCURRENCY_PER_GPU if device.type == "cuda" else 1


def default_workers(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return WORKERS_PER_GPU * torch.cuda.device_count()


def for_data(spec: WorkerSpec, data: Dataset, args: SearchArgs) -> WorkerSpec:
    """The search for this data: the space takes its channels, classes and normalisation,
    and a space with the cifar stem (made for small images at their own resolution) its
    image size, unless --image-size or --space set one; --augment auto becomes crop-flip
    for colour, none for grey. (The d2l stem keeps the chapter's 96 px.)"""
    side = data.side if spec.space.stem == "cifar" and not args.size_given else None
    try:
        space = spec.space.for_data(data.input_spec(), side)
    except ConfigError as e:
        raise UsageError(f"{e} (for {data.side} px images; try --image-size)") from None
    budget = spec.budget
    if args.augment_auto:
        budget = replace(budget, augment=default_augment(data.channels))
    return replace(spec, space=space, budget=budget)


def existing_study(
    spec: WorkerSpec,
) -> tuple[StudyRecord | None, optuna.storages.BaseStorage | None]:
    """The record of the study spec names, if it exists, and its storage, if that exists
    (opened once: _open_study takes it)."""
    try:
        storage = open_storage(spec.storage, True, spec.heartbeat, spec.storage_patience)
    except UsageError:  # no such storage yet (it is made once the data has been read)
        return None, None
    try:
        return StudyRecord.of(optuna.load_study(study_name=spec.study, storage=storage)), storage
    except KeyError:  # no such study yet
        return None, storage


def continued(
    spec: WorkerSpec, args: SearchArgs, stored: StudyRecord | None
) -> tuple[WorkerSpec, SearchArgs]:
    """A continued study's own settings for those the command line left out: its search
    space, objectives, train budget, halving and cost limits (a limit changes only where
    given: `--max-X none` removes it) and whether unreadable images are left out; its data is its
    own unless --data names other (run_search). Settings given that differ are refused
    later, all in one line (nas.study.storage.create_or_load)."""
    given = args.given
    if given is None or stored is None or stored.record != record.RECORD_VERSION:
        return spec, args  # new, or of another format: refused as such (_open_study)
    changes: dict[str, Any] = {}
    if "space" not in given and stored.space:
        changes["space"] = SearchSpace.from_dict(stored.space)
        args = replace(args, size_given=True)  # the stored side, as resolved then
    if "budget" not in given:
        changes["budget"] = TrainBudget.from_dict(stored.budget)
        args = replace(args, augment_auto=False)  # the stored augmentation
    if "objectives" not in given and stored.objectives:
        changes["objectives"] = tuple(stored.objectives)
    old = Limits.from_dict(stored.limits)
    values = dict(old.values)
    for name in LIMIT_NAMES:
        if name in given:
            values.pop(name, None)
            if name in spec.limits.values:
                values[name] = spec.limits.values[name]
    device = spec.limits.latency_device if "latency_device" in given else old.latency_device
    changes["limits"] = Limits.of(device, **values)
    if "skip_bad_images" not in given:
        changes["skip_bad_images"] = bool(stored.data_record.get("skip_bad_images"))
    if "halving" not in given:
        changes["halving"] = Halving.of(stored)
    return replace(spec, **changes), args


def budget_notes(budget: TrainBudget, data: Dataset) -> list[str]:
    """How much of the data a trial sees; refuses a batch larger than the training set."""
    n, bs = len(data.train_x), budget.batch_size
    if n < bs:
        raise UsageError(
            f"the data has {n:,} training images, fewer than one batch of {bs} (budget "
            f"{budget.name!r}): use more images, or a budget with a smaller batch"
        )
    notes = []
    seen = budget.steps * bs
    if seen > n:
        notes.append(
            f"each trial trains on {seen:,} images: {seen / n:.1f} passes over the "
            f"{n:,} training images"
        )
    if budget.val_images > len(data.val_x):
        notes.append(
            f"each trial is scored on all {len(data.val_x):,} validation images (budget "
            f"{budget.name!r} asks for {budget.val_images:,}): one image is "
            f"{100 / len(data.val_x):.2g} points of accuracy, and which images happen to be "
            f"in the split moves an accuracy by up to {50 / math.sqrt(len(data.val_x)):.2g} "
            "points (one standard error, at 50 %)"
        )
    if budget.steps < MIN_STEPS:
        notes.append(
            f"budget {budget.name!r} trains each network for {budget.steps} steps of "
            f"{bs} images, too few to learn much: its accuracies rank little (a budget for "
            "trying nas out); for a search whose ranking means something, --budget short"
        )
    return notes


def check_gpu_costs(spec: WorkerSpec, device: torch.device) -> None:
    """GPU costs need a GPU, and GPU latency needs it to one trial at a time."""
    gpu_latency = times_gpu_latency(spec)
    memory = "memory" in spec.objectives or "memory" in spec.limits.needs()
    if device.type != "cuda" and (gpu_latency or memory):
        what = "GPU latency" if gpu_latency else "training memory"
        raise UsageError(
            f"{what} is measured on a GPU, and trials here run on the CPU (use latency-cpu, "
            "or run on a GPU)"
        )
    if gpu_latency and (spec.concurrency > 1 or spec.workers > 1):
        raise UsageError(
            "GPU latency is timed with the GPU to one trial: use --concurrency 1 and "
            f"--workers 1 (here {spec.workers} x {spec.concurrency} at once)"
        )


FAR_MMACS = 20_000  # a space reaching past 20 GMACs per image is worth a word


def preflight(spec: WorkerSpec, trials: int, device: torch.device, data: Dataset) -> list[str]:
    """What the user should know before the first trial: a MAC budget no network meets, a
    space with networks far beyond reach, more workers than cores, and on a CPU how long a
    trial of a GPU budget will take, from one training step measured here."""
    notes = []
    small, large = (closed_form_mmacs(c) for c in spec.space.corners())
    max_mmacs = spec.limits.get("macs")
    if max_mmacs is not None and max_mmacs < small:
        notes.append(
            f"--max-mmacs {max_mmacs:g} is below the smallest network of this space "
            f"({small:.6f} MMACs (fvcore)): every trial will be infeasible and none trained"
        )
    if large > FAR_MMACS:
        notes.append(
            f"this space reaches {large:,.0f} MMACs (fvcore) per image (networks from "
            f"{small:,.1f}); its largest networks may take hours per trial or not fit in memory"
        )
    cores = os.cpu_count() or 1
    if device.type == "cpu" and spec.workers > cores:
        notes.append(f"{spec.workers} workers share {cores} CPU cores: trials will take turns")
    if device.type == "cpu" and spec.workers * spec.concurrency > 1:
        notes.append(
            "trials run side by side on this CPU: each trial's CPU latency is timed while "
            "others train on the same cores, so expect it higher and noisier than alone"
        )
    if device.type == "cpu" and spec.budget.name != "smoke":
        ref = reference_params(spec.space)
        config = D2L_CHAPTER if ref is not None else spec.space.middle()
        b = spec.budget
        probe = replace(b, train_images=2 * b.batch_size, val_images=1, bn_recalibration=0)
        r = train_and_evaluate(config, probe, data.train, data.val)
        per_trial = r.train_seconds / 2 * b.steps
        total = per_trial * trials / max(1, spec.workers)
        notes.append(
            f"budget {b.name!r} is meant for a GPU. On this CPU one training step of "
            f"{config.describe()} took {r.train_seconds / 2:.2g} s: one {b.name} trial of it "
            f"trains for about {_duration(per_trial)}, {trials} such "
            f"trial{'s' if trials != 1 else ''} for about {_duration(total)}"
            + (" at most (halving: most runs are shorter)" if spec.halving else "")
            + f" (networks here span "
            f"{small:,.1f} to {large:,.0f} MMACs). For a look on a CPU: --budget smoke "
            "--preset tiny"
        )
    return notes


def _duration(seconds: float) -> str:
    """'40 s', '12 min', '3.4 h': in the unit that keeps a figure readable."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def reference_interrupted(study: optuna.Study) -> bool:
    """True if the d2l reference was queued but every run of it was interrupted (Ctrl-C,
    SIGTERM, SIGHUP): it is queued again, so every study that can hold it ends up with it
    trained. (Only the study's creator queues it first, so that workers starting at once
    queue it once; one that failed for a reason of its own, e.g. out of memory, is not
    retried; a killed one is retried by the heartbeat.)"""
    refs = [t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).reference]
    return bool(refs) and all(
        t.state == optuna.trial.TrialState.FAIL
        and (TrialRecord.of(t).fail_reason or "").startswith("interrupted")
        for t in refs
    )


def run_search(args: SearchArgs) -> optuna.Study:
    """Check everything, open or create the study, run the trials, print the summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored, storage = existing_study(args.spec)
    spec, args = continued(args.spec, args, stored)
    try:
        device = pick_device(spec.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    workers = spec.workers or default_workers(device)
    # auto: one trial at a time when GPU latency is an objective or a budget
    k = spec.concurrency or (1 if times_gpu_latency(spec) else default_concurrency(device))
    spec = replace(spec, device=device.type, workers=workers, concurrency=k)
    check_gpu_costs(spec, device)
    if spec.halving is not None:
        try:
            spec.halving.check(spec.budget)
        except ConfigError as e:
            raise UsageError(str(e)) from None
    if spec.data is None:  # a continued study's own data, else Fashion-MNIST
        source = stored.data_record.get("source") if stored else None
        spec = replace(spec, data=source or DEFAULT_SOURCE)
    try:
        # loaded by each worker
        data = load_data(spec.data, spec.data_dir, device, spec.skip_bad_images)
    except DataError as e:
        raise UsageError(str(e)) from None
    print(describe(data), flush=True)
    spec = for_data(spec, data, args)
    notes = list(data.notes) + budget_notes(spec.budget, data)  # may refuse: before the study
    study, study_notes = _open_study(spec, device, data, storage)
    notes += study_notes
    for line in notes + preflight(spec, args.trials, device, data):
        print(f"note: {line}", flush=True)
    t0 = time.perf_counter()
    counts, gpu = _run_trials(spec, args.trials, device, data)
    print(_summary(spec, study, counts, gpu, time.perf_counter() - t0))
    return study


def _open_study(
    spec: WorkerSpec,
    device: torch.device,
    data: Dataset,
    storage: optuna.storages.BaseStorage | None = None,
) -> tuple[optuna.Study, list[str]]:
    """Open or create the study (refusing another experiment), take the budgets, queue
    the d2l reference where due, and print the header; returns notes for the user.
    `storage`: spec.storage already opened (else opened here)."""
    storage = storage or open_storage(
        spec.storage, heartbeat=spec.heartbeat, patience=spec.storage_patience
    )
    experiment = record.experiment(
        spec.space.to_dict(),
        spec.objectives,
        spec.limits.to_dict(),
        precision(device),
        data.fingerprint,
        spec.budget.to_dict(),  # the augmentation with it
    )
    sampler = make_sampler(spec.sampler, spec.seed)
    study, created = open_or_create_study(storage, spec.study, sampler, experiment)
    changed = None if created else update_limits(study, spec.limits)
    _take_halving(study, spec.halving)
    stored = StudyRecord.of(study).data_record
    # where the data came from, and how it was read: nas.refine and nas.train read it
    if not stored or stored.get("skip_bad_images") != data.record().get("skip_bad_images"):
        record.write_study(study, data_record=data.record())
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    ref = reference_params(spec.space)
    if ref is not None and (created or reference_interrupted(study)):
        study.enqueue_trial(ref, user_attrs=record.trial_attrs(reference="d2l chapter"))
    before = ", ".join(f"{n} {s.name.lower()}" for s, n in sorted(states.items())) or "none"
    b = spec.budget
    print(
        f"study {spec.study!r} in {public_url(spec.storage)} (trials so far: {before})\n"
        f"preset {spec.space.preset}, budget {b.name} ({b.steps * b.batch_size:,} train "
        f"images, {b.val_images:,} val), {precision(device)}, sampler {spec.sampler}, "
        f"device {device}, workers {spec.workers} x {spec.concurrency} trials at once\n"
        f"objectives {', '.join(metric_names(spec.objectives))}; budgets: "
        + spec.limits.describe()
        + ("" if spec.halving is None else f"\n{spec.halving.describe(b)}"),
        flush=True,
    )
    notes = [changed] if changed else []
    crowded = connection_note(storage, spec.workers, spec.concurrency)
    return study, notes + ([crowded] if crowded else [])


def _take_halving(study: optuna.Study, halving: Halving | None) -> None:
    """Store the search's halving with the study; one that halved already keeps its own
    (rung budgets of another ETA would not rank with its runs)."""
    stored = Halving.of(StudyRecord.of(study))
    if halving is None or stored == halving:
        return
    if stored is not None:
        raise UsageError(
            f"study {study.study_name!r} halves with --halving {stored.eta} --rungs "
            f"{stored.rungs}, not --halving {halving.eta} --rungs {halving.rungs}: leave them "
            "out to continue it, or use another --study"
        )
    record.write_study(study, halving=halving.to_dict())


def _run_trials(
    spec: WorkerSpec, trials: int, device: torch.device, data: Dataset
) -> tuple[Tally, GpuMonitor]:
    """Run `trials` trials in this process or in spec.workers processes, with a progress
    bar and a line per trial; returns this run's tally and the GPU's utilisation monitor."""
    # disable=None: a bar on a terminal, none in a log file (the per-trial lines remain).
    bar = tqdm(total=trials, unit="trial", dynamic_ncols=True, file=sys.stderr, disable=None)
    counts = Tally()

    def progress(now: Tally) -> None:
        nonlocal counts
        counts = now
        bar.set_postfix(failed=now.failed)
        bar.update(now.done - bar.n)

    try:
        with GpuMonitor(device) as gpu:
            if spec.workers == 1:
                left = trials
                lock = threading.Lock()  # trial threads claim and report (--concurrency)

                def claim() -> bool:
                    nonlocal left
                    with lock:
                        left -= 1
                        return left >= 0

                def on_trial(_: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
                    with lock:
                        bar.write(trial_line(t), file=sys.stdout)
                        now = replace(counts)
                        warning = now.count(t)
                        if warning:
                            bar.write(warning, file=sys.stdout)
                        progress(now)
                        sys.stdout.flush()

                trial_loop(spec, 0, claim, on_trial, data)
            else:
                del data  # each worker loads its own copy onto its device
                codes = run_workers(spec, trials, progress)
                if any(codes):
                    raise UsageError(f"a worker failed (exit codes {codes}); see its output above")
    finally:
        bar.close()
    return counts, gpu


def _halving_words(study: optuna.Study, halving: Halving) -> str:
    """What the study's rungs trained, and what the same networks would have cost each
    trained on the whole budget (a uniform search of the same networks)."""
    counts = rung_counts(study, halving)
    spent = sum(n * images for n, images in counts)
    uniform = counts[0][0] * counts[-1][1]
    rungs = ", ".join(f"rung {i} {n} ({images:,} images each)" for i, (n, images) in
                      enumerate(counts))  # fmt: skip
    share = f" ({spent / uniform:.0%})" if uniform else ""
    return (
        f"halving {halving.eta}: networks trained per rung in the study: {rungs}; "
        f"{spent:,} training images, against {uniform:,} for its {counts[0][0]} networks "
        f"each trained on the whole budget{share}"
    )


def _summary(
    spec: WorkerSpec, study: optuna.Study, counts: Tally, gpu: GpuMonitor, elapsed: float
) -> str:
    """The run in three or four lines: counts and throughput, the front, what next."""
    front = pareto_front(study)
    numbers = ", ".join(str(t.number) for t in front)
    first_cost = "fewest MACs" if spec.objectives[1] == "macs" else f"lowest {spec.objectives[1]}"
    workers = spec.workers
    use = f"{counts.images / elapsed:,.0f} train images/s over the run, "
    use += "all trials together"
    if gpu.mean() is not None:
        use += f"; GPU busy {gpu.mean():.0f}% of the time (NVML, {len(gpu.samples)} samples)"
    return (
        f"{counts.done} trial{'s' if counts.done != 1 else ''} in {elapsed:.1f} s "
        f"({counts.failed} failed, {counts.duplicates} repeating a trained network"
        + (" or a promotion" if spec.halving is not None else "")
        + ", "
        + (f"{counts.eager} trained eagerly with CUDA graphs off, " if counts.eager else "")
        + f"{workers} worker{'s' if workers > 1 else ''} x {spec.concurrency} at once); "
        f"{use}\nPareto front: {len(front)} trial"
        f"{'s' if len(front) != 1 else ''} (trial numbers, {first_cost} first: {numbers or '-'})\n"
        + ("" if front else f"{why_no_front(study)}\n")
        + ("" if spec.halving is None else f"{_halving_words(study, spec.halving)}\n")
        + f"next: python -m nas.report --study {spec.study}"
        + (
            f" --storage {public_url(spec.storage)}"
            if spec.storage != default_storage_url(spec.study)
            else ""
        )
    )
