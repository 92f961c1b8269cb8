"""`python -m nas.search`: run (or continue) a DenseNet architecture search.

Parses and checks every argument before touching data or storage, loads the data
(nas.data.dataset: Fashion-MNIST or the user's own) onto the device once, opens or creates the
study, enqueues the d2l chapter's network as the reference (when the space contains it),
and runs the trials with a progress bar and one line per trial.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
from tqdm import tqdm

from nas.arch.config import D2L_CHAPTER, ConfigError
from nas.arch.space import PRESETS, load_space_file, parse_range, reference_params
from nas.cli import UsageError, int_at_least, make_parser, public_url, run_cli
from nas.cli import positive_int as _positive_int
from nas.cost import closed_form_mmacs
from nas.data.dataset import (
    DEFAULT_SOURCE,
    DataError,
    Dataset,
    default_augment,
    describe,
    load_data,
)
from nas.parallel.slurm import SlurmRequest, add_slurm_options, slurm_request, submit_array
from nas.parallel.threads import GpuMonitor
from nas.parallel.workers import (
    SAMPLERS,
    WorkerSpec,
    make_sampler,
    run_workers,
    tally_trial,
    times_gpu_latency,
    trial_line,
    trial_loop,
)
from nas.results.front import pareto_front, why_no_front
from nas.study.metrics import (
    DEFAULT_OBJECTIVES,
    Limits,
    describe_limits,
    metric_names,
    parse_objectives,
)
from nas.study.storage import (
    check_study_name,
    connection_note,
    default_storage_url,
    open_or_create_study,
    open_storage,
    update_budgets,
)
from nas.training.budget import AUGMENTS, BUDGETS, TrainBudget, get_budget
from nas.training.fit import pick_device, train_and_evaluate
from nas.training.step import precision

__all__ = ["SearchArgs", "main", "make_sampler"]

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

EPILOG = """\
objectives (--objectives, accuracy and one or two costs; every trial measures all costs):
  accuracy     validation accuracy on the data's fixed validation split (maximised)
  macs         MACs (fvcore) in millions at batch 1; fvcore counts one multiply-add as one
               flop, so --max-mmacs is in those units too (1 MAC = 2 FLOPs)
  params       parameters, in millions
  latency-cpu  ms per image at batch 1 on one CPU thread, fp32 (median of up to 21 runs)
  latency-gpu  ms per image at batch 1 on the training GPU, bf16, CUDA graph (median of
               50 replays; needs the GPU to one trial: --concurrency 1, --workers 1)
  memory       MB of GPU memory of one training step at the budget's batch size
budgets: one known before training (MACs, params, latencies) skips training when over;
  memory is known after training (the trial is trained, then marked infeasible).
presets:
  d2l    the d2l chapter's layout: 4 dense blocks, 7x7 stem, 96x96 input (default)
  cifar  DenseNet-BC: 3 dense blocks with bottlenecks, 3x3 stem, the data's own size
  tiny   cifar cut down for a CPU (k 8..16, 1..4 convs per block): a smoke trial in ~1 s
train budgets (--budget):
  smoke       16 steps of 32 images: seconds per trial on a CPU (tests, demos); its
              accuracies rank nothing
  smoke-long  64 steps of 32 images: smoke four times over, for nas.refine on a CPU
  short       195 steps of 256, one epoch of Fashion-MNIST's 50k: for a GPU (default)
  long        976 steps of 256, about five epochs
cost budgets (--max-*) may change on an existing study: every stored trial is judged
  by the new ones from its stored costs; the train budget, space and data may not.
examples:
  python -m nas.search --trials 100
  python -m nas.search --trials 3 --budget smoke --preset tiny --study demo
  python -m nas.search --preset cifar --growth-rate 8:24:4 --convs 2:8 --max-mmacs 50
  python -m nas.search --objectives accuracy,latency-cpu --max-params 500000
  python -m nas.search --data ~/photos --preset cifar --image-size 64 --study photos
"""


@dataclass(frozen=True)
class SearchArgs:
    trials: int  # trials this run adds (other machines may add theirs)
    spec: WorkerSpec  # the rest; spec.workers and spec.concurrency 0, spec.device "auto":
    # chosen from the device
    augment_auto: bool = False  # --augment auto: chosen from the data's channels
    size_given: bool = False  # --image-size, or image_size in --space
    slurm: SlurmRequest | None = None  # --slurm-array: submit the search (nas.parallel.slurm)


def _image_side(text: str) -> int:
    v = _positive_int(text)
    if not 8 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"expected a side of 8 to 1024 pixels, got {v}")
    return v


def _non_negative_int(text: str) -> int:
    return int_at_least(text, 0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _auto_or(high: int) -> Callable[[str], int]:
    """An argparse type: "auto" (0) or an integer in 1..high."""

    def parse(text: str) -> int:
        if text == "auto":
            return 0
        try:
            v = int(text)
        except ValueError:
            v = 0
        if not 1 <= v <= high:
            raise argparse.ArgumentTypeError(f"expected auto or 1..{high}, got {text!r}")
        return v

    return parse


def default_concurrency(device: torch.device) -> int:
    return CONCURRENCY_PER_GPU if device.type == "cuda" else 1


def default_workers(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return WORKERS_PER_GPU * torch.cuda.device_count()


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "nas.search",
        "Search DenseNet architectures (growth rate, convs per block, compression) for the "
        "best validation accuracy per MAC on your images (--data; Fashion-MNIST by default). "
        "Re-running continues the study.",
        EPILOG,
    )
    p.add_argument("--trials", type=_positive_int, default=100, help="trials to run (default 100)")
    p.add_argument("--study", default="densenet", help="study name (default densenet)")
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///studies/STUDY.db; postgresql://... works)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="d2l",
        help="search space preset (default d2l; see presets below)",
    )
    p.add_argument(
        "--budget",
        choices=list(BUDGETS),
        default="short",
        help="train budget per trial (default short; see budgets below)",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="Optuna sampler (default tpe: multivariate TPE with constant liar)",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        help="sampler seed, for a reproducible run: each trial's draw follows from the seed "
        "and its trial number, so hosts sharing a study with one seed draw different trials "
        "(default: a fresh seed per process)",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="where trials train (default auto: CUDA if PyTorch sees a GPU, else the CPU; "
        "CUDA trains in bf16, the CPU in fp32, and a study keeps to one)",
    )
    p.add_argument(
        "--workers",
        type=_auto_or(64),
        default="auto",
        help=f"trial processes on this machine (default auto: 1 on a CPU, "
        f"{WORKERS_PER_GPU} per GPU). On a CPU the cores are shared out among them, and "
        "results depend on the thread count: compare trials run with the same --workers",
    )
    p.add_argument(
        "--concurrency",
        type=_auto_or(MAX_CONCURRENCY),
        default="auto",
        metavar="K",
        help=f"trials at once in each worker process, each in its own thread and CUDA "
        f"streams, so that small networks fill a large GPU (at most {MAX_CONCURRENCY}: each "
        f"holds 2 of PyTorch's 32 pooled streams; default auto: "
        f"{CONCURRENCY_PER_GPU} on a GPU until K > 1 is measured there, 1 on a CPU; try "
        f"{CANDIDATE_CONCURRENCY} on a large GPU). A trial's accuracy does not depend "
        "on K; its train seconds are its own wall time, shared with the trials beside it",
    )
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="the images to search on (default: a continued study's own, else fashion-mnist, "
        "Debian's package): a folder "
        "of class subfolders of images (or of train/, val/, test/ holding them), a .npz "
        "(train_images/train_labels or x_train/y_train, + val_*, test_*), a folder of "
        "IDX files, or CIFAR-10/100's python batches; see README 'Your data'",
    )
    p.add_argument(
        "--data-dir", help="folder of the Fashion-MNIST IDX .gz files (with --data fashion-mnist)"
    )
    p.add_argument(
        "--augment",
        choices=("auto", *AUGMENTS),
        default="auto",
        help="crop-flip: a random crop of the image padded by 4 px and a left-right mirror "
        "per image, on the device (the CIFAR recipe); default auto: crop-flip for colour "
        "images, none for grey (part of the stored budget)",
    )
    p.add_argument(
        "--max-mmacs",
        type=_positive_float,
        metavar="M",
        help="budget in millions of multiply-adds at batch 1, as fvcore counts them "
        "(MACs, not FLOPs: 1 MAC = 2 FLOPs); larger networks are infeasible, not trained",
    )
    p.add_argument("--max-mflops", help=argparse.SUPPRESS)  # renamed: refused with a hint
    p.add_argument(
        "--objectives",
        default=",".join(DEFAULT_OBJECTIVES),
        metavar="A,B[,C]",
        help="what to optimise: accuracy and one or two of macs, params, latency-cpu, "
        "latency-gpu, memory (default accuracy,macs; see objectives below)",
    )
    p.add_argument(
        "--max-params",
        type=_positive_float,
        metavar="N",
        help="budget in parameters (e.g. 500000); larger networks are infeasible, not trained",
    )
    p.add_argument(
        "--max-latency-ms",
        type=_positive_float,
        metavar="MS",
        help="budget in ms per image at batch 1, on the device --latency-device names; "
        "slower networks are infeasible, not trained",
    )
    p.add_argument(
        "--latency-device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where --max-latency-ms is measured: cpu (one thread, fp32; default) or gpu "
        "(the training GPU, bf16, CUDA graph; needs --concurrency 1)",
    )
    p.add_argument(
        "--max-memory-mb",
        type=_positive_float,
        metavar="MB",
        help="budget in MB of GPU memory for one training step (GPU only); known after "
        "training, so a network over it is trained, then marked infeasible",
    )
    p.add_argument(
        "--lr",
        type=_positive_float,
        help="peak learning rate, replacing the budget's (part of the stored budget)",
    )
    p.add_argument(
        "--heartbeat",
        type=_positive_int,
        default=10,
        metavar="S",
        help="seconds between a running trial's heartbeats; a trial silent for 3 heartbeats "
        "(its worker killed) is failed and retried once (default 10)",
    )
    g = p.add_argument_group("search-space overrides (after the preset and --space)")
    g.add_argument(
        "--space",
        metavar="FILE",
        help="TOML file of search-space overrides; keys: growth_rate = [low, high, step], "
        "convs_per_block = [low, high], compression = [low, high, step], num_blocks, stem "
        '("d2l" or "cifar"), stem_channels (0: 2k), image_size, bottleneck, convention '
        '("d2l" or "paper")',
    )
    g.add_argument(
        "--image-size",
        type=_image_side,
        metavar="N",
        help="side in pixels (8 to 1024) the network sees (images are resized on the device; "
        "default: the preset's, 96 for d2l, the data's own for cifar and tiny)",
    )
    g.add_argument("--growth-rate", metavar="LO:HI[:STEP]", help="range of k")
    g.add_argument("--convs", metavar="LO:HI", help="range of conv blocks per dense block")
    g.add_argument("--compression", metavar="LO:HI:STEP", help="range of theta, in (0, 1]")
    add_slurm_options(p)
    return p


def parse_args(argv: list[str] | None) -> SearchArgs:
    a = build_parser().parse_args(argv)
    if a.max_mflops is not None:
        raise UsageError(
            "--max-mflops is now --max-mmacs: the budget is in millions of multiply-adds "
            "(fvcore's 'flops'), half the FLOP count"
        )
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
    if a.image_size:
        flags["image_size"] = a.image_size
    if flags:
        space = space.override(flags, "command line")
    budget = get_budget(a.budget)
    if a.lr is not None:
        budget = replace(budget, lr=a.lr)
    if a.augment != "auto":
        budget = replace(budget, augment=a.augment)
    augment_auto = a.augment == "auto"
    try:
        objectives = parse_objectives(a.objectives)
    except ValueError as e:
        raise UsageError(f"--objectives: {e}") from None
    limits = Limits(a.max_params, a.max_latency_ms, a.latency_device, a.max_memory_mb)
    spec = WorkerSpec(
        storage=a.storage or default_storage_url(a.study),
        study=check_study_name(a.study),
        space=space,
        budget=budget,
        sampler=a.sampler,
        seed=a.seed,
        device=a.device,
        data_dir=a.data_dir,
        max_mmacs=a.max_mmacs,
        workers=a.workers,
        heartbeat=a.heartbeat,
        concurrency=a.concurrency,
        objectives=objectives,
        limits=limits,
        data=a.data,
    )
    size_given = bool(a.image_size) or space.image_size != PRESETS[a.preset].image_size
    return SearchArgs(a.trials, spec, augment_auto, size_given, slurm_request(a))


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


def study_source(spec: WorkerSpec) -> tuple[str, optuna.storages.BaseStorage | None]:
    """Without --data: the data an existing study was searched on, else Fashion-MNIST;
    and the storage, when it exists already (opened once: _open_study takes it)."""
    try:
        storage = open_storage(spec.storage, heartbeat=spec.heartbeat, must_exist=True)
    except UsageError:  # no such storage yet (it is made once the data has been read)
        return DEFAULT_SOURCE, None
    try:
        attrs = optuna.load_study(study_name=spec.study, storage=storage).user_attrs
    except KeyError:  # no such study yet
        return DEFAULT_SOURCE, storage
    return (attrs.get("data_record") or {}).get("source") or DEFAULT_SOURCE, storage


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
            f"{budget.name!r} asks for {budget.val_images:,})"
        )
    return notes


def check_gpu_costs(spec: WorkerSpec, device: torch.device) -> None:
    """GPU costs need a GPU, and GPU latency needs it to one trial at a time."""
    gpu_latency = times_gpu_latency(spec)
    memory = "memory" in spec.objectives or spec.limits.memory_mb is not None
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
    if spec.max_mmacs is not None and spec.max_mmacs < small:
        notes.append(
            f"--max-mmacs {spec.max_mmacs:g} is below the smallest network of this space "
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
        r = train_and_evaluate(config, probe, data.train_x, data.train_y, data.val_x, data.val_y)
        per_trial = r.train_seconds / 2 * b.steps
        notes.append(
            f"budget {b.name!r} is meant for a GPU. On this CPU one training step of "
            f"{config.describe()} took {r.train_seconds / 2:.1f} s: one {b.name} trial of it "
            f"trains for about {per_trial / 60:,.0f} min, {trials} such trials for about "
            f"{per_trial * trials / 3600 / max(1, spec.workers):,.1f} h (networks here span "
            f"{small:,.1f} to {large:,.0f} MMACs). For a look on a CPU: --budget smoke "
            "--preset tiny"
        )
    return notes


def reference_interrupted(study: optuna.Study) -> bool:
    """True if the d2l reference was queued but every run of it was interrupted (Ctrl-C,
    SIGTERM, SIGHUP): it is queued again, so every study that can hold it ends up with it
    trained. (Only the study's creator queues it first, so that workers starting at once
    queue it once; one that failed for a reason of its own, e.g. out of memory, is not
    retried; a killed one is retried by the heartbeat.)"""
    refs = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reference")]
    return bool(refs) and all(
        t.state == optuna.trial.TrialState.FAIL
        and str(t.user_attrs.get("fail_reason", "")).startswith("interrupted")
        for t in refs
    )


def run_search(args: SearchArgs) -> optuna.Study:
    """Check everything, open or create the study, run the trials, print the summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = args.spec
    try:
        device = pick_device(spec.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    workers = spec.workers or default_workers(device)
    # auto: one trial at a time when GPU latency is an objective or a budget
    k = spec.concurrency or (1 if times_gpu_latency(spec) else default_concurrency(device))
    spec = replace(spec, device=device.type, workers=workers, concurrency=k)
    check_gpu_costs(spec, device)
    storage = None
    if spec.data is None:
        source, storage = study_source(spec)
        spec = replace(spec, data=source)
    try:
        data = load_data(spec.data, spec.data_dir, device=device)  # loaded by each worker
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
    storage = storage or open_storage(spec.storage, heartbeat=spec.heartbeat)
    experiment = {
        "space": spec.space.to_dict(),
        "objectives": list(spec.objectives),
        "max_mmacs": spec.max_mmacs,
        "limits": spec.limits.to_dict(),
        "precision": precision(device),
        "data": {**data.fingerprint, "augment": spec.budget.augment},
        "budget": spec.budget.to_dict(),
    }
    sampler = make_sampler(spec.sampler, spec.seed)
    study, created = open_or_create_study(storage, spec.study, sampler, experiment)
    changed = None if created else update_budgets(study, spec.max_mmacs, experiment["limits"])
    if "data_record" not in study.user_attrs:  # where the data came from: nas.refine reads it
        study.set_user_attr("data_record", data.record())
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    ref = reference_params(spec.space)
    if ref is not None and (created or reference_interrupted(study)):
        study.enqueue_trial(ref, user_attrs={"reference": "d2l chapter"})
    before = ", ".join(f"{n} {s.name.lower()}" for s, n in sorted(states.items())) or "none"
    b = spec.budget
    print(
        f"study {spec.study!r} in {public_url(spec.storage)} (trials so far: {before})\n"
        f"preset {spec.space.preset}, budget {b.name} ({b.steps * b.batch_size:,} train "
        f"images, {b.val_images:,} val), {precision(device)}, sampler {spec.sampler}, "
        f"device {device}, workers {spec.workers} x {spec.concurrency} trials at once\n"
        f"objectives {', '.join(metric_names(spec.objectives))}; budgets: "
        + describe_limits(spec.max_mmacs, spec.limits.to_dict()),
        flush=True,
    )
    notes = [changed] if changed else []
    crowded = connection_note(storage, spec.workers, spec.concurrency)
    return study, notes + ([crowded] if crowded else [])


def _run_trials(
    spec: WorkerSpec, trials: int, device: torch.device, data: Dataset
) -> tuple[list[int], GpuMonitor]:
    """Run `trials` trials in this process or in spec.workers processes, with a progress
    bar and a line per trial; returns this run's counts [done, failed, duplicates,
    trained, trained eagerly] and the GPU's utilisation monitor."""
    # disable=None: a bar on a terminal, none in a log file (the per-trial lines remain).
    bar = tqdm(total=trials, unit="trial", dynamic_ncols=True, file=sys.stderr, disable=None)
    counts = [0, 0, 0, 0, 0]

    def progress(now: list[int]) -> None:
        counts[:] = now
        bar.set_postfix(failed=now[1])
        bar.update(now[0] - bar.n)

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
                        now = list(counts)
                        warning = tally_trial(now, t)
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


def _summary(
    spec: WorkerSpec, study: optuna.Study, counts: list[int], gpu: GpuMonitor, elapsed: float
) -> str:
    """The run in three or four lines: counts and throughput, the front, what next."""
    front = pareto_front(study)
    numbers = ", ".join(str(t.number) for t in front)
    first_cost = "fewest MACs" if spec.objectives[1] == "macs" else f"lowest {spec.objectives[1]}"
    b, workers = spec.budget, spec.workers
    use = f"{counts[3] * b.steps * b.batch_size / elapsed:,.0f} train images/s over the run, "
    use += "all trials together"
    if gpu.mean() is not None:
        use += f"; GPU busy {gpu.mean():.0f}% of the time (NVML, {len(gpu.samples)} samples)"
    return (
        f"{counts[0]} trials in {elapsed:.1f} s ({counts[1]} failed, {counts[2]} repeating a "
        f"trained network, "
        + (f"{counts[4]} trained eagerly with CUDA graphs off, " if counts[4] else "")
        + f"{workers} worker{'s' if workers > 1 else ''} x {spec.concurrency} at once); "
        f"{use}\nPareto front: {len(front)} trial"
        f"{'s' if len(front) != 1 else ''} (trial numbers, {first_cost} first: {numbers or '-'})\n"
        + ("" if front else f"{why_no_front(study)}\n")
        + f"next: python -m nas.report --study {spec.study}"
        + (
            f" --storage {public_url(spec.storage)}"
            if spec.storage != default_storage_url(spec.study)
            else ""
        )
    )


def _run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.slurm is not None:  # submitted instead: each array task runs run_search
        return submit_array(args)
    run_search(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.search", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
