"""`python -m nas.search`: run (or continue) a DenseNet architecture search.

Parses and checks every argument before touching data or storage, loads the data
(nas.data.dataset: Fashion-MNIST or the user's own) onto the device once, opens or creates the
study, enqueues the d2l chapter's network as the reference (when the space contains it),
and runs the trials with a progress bar and one line per trial.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import textwrap
from dataclasses import replace
from typing import Any

from nas.arch.space import PRESETS, load_space_file, parse_range
from nas.cli import (
    NONE,
    add_skip_bad_images,
    at_least,
    auto_or,
    make_parser,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    positive_or_none,
    run_cli,
    slurm_minutes,
)
from nas.errors import UsageError
from nas.parallel.run import (
    CANDIDATE_CONCURRENCY,
    CONCURRENCY_PER_GPU,
    MAX_CONCURRENCY,
    WORKERS_PER_GPU,
    SearchArgs,
    run_search,
)
from nas.parallel.slurm import SlurmRequest, submit_array
from nas.parallel.workers import (
    SAMPLERS,
    WorkerSpec,
)
from nas.study.metrics import (
    DEFAULT_OBJECTIVES,
    METRICS,
    Limits,
    limit_options,
    parse_objectives,
)
from nas.study.patience import DEFAULT_PATIENCE_S
from nas.study.rungs import DEFAULT_RUNGS, Halving
from nas.study.storage import (
    check_study_name,
    default_storage_url,
)
from nas.training.budget import AUGMENTS, BUDGETS, get_budget

__all__ = [
    "build_parser",
    "main",
    "parse_args",
    "slurm_task",
]


def _objectives_help() -> str:
    """The epilog's objectives, one per entry of the table (nas.study.metrics)."""
    lines = ["objectives (--objectives, accuracy and one or two costs; every trial measures "
             "all costs):"]  # fmt: skip
    for m in METRICS.values():
        lines += textwrap.wrap(
            m.brief, 89, initial_indent=f"  {m.name:<12} ", subsequent_indent=" " * 15
        )
    return "\n".join(lines) + "\n"


EPILOG = (
    _objectives_help()
    + """\
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
continuing a study (the same --study): it keeps its own space, objectives, train budget,
  data and cost budgets for every option left out (--study S --trials N is enough); a
  cost budget (--max-*) may change, only where given (none removes it), and every stored
  trial is judged by the new ones from its stored costs; the train budget, space,
  objectives and data may not (all that differ are named at once).
examples:
  python -m nas.search --trials 100
  python -m nas.search --trials 3 --budget smoke --preset tiny --study demo
  python -m nas.search --preset cifar --growth-rate 8:24:4 --convs 2:8 --max-mmacs 50
  python -m nas.search --objectives accuracy,latency-cpu --max-params 500000
  python -m nas.search --data ~/photos --preset cifar --image-size 64 --study photos
"""
)


def _image_side(text: str) -> int:
    v = positive_int(text)
    if not 8 <= v <= 1024:
        raise argparse.ArgumentTypeError(f"expected a side of 8 to 1024 pixels, got {v}")
    return v


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "SLURM (one command submits the whole search; the storage must be PostgreSQL)"
    )
    g.add_argument(
        "--slurm-array",
        type=at_least(1),
        metavar="N",
        help="submit N workers as one SLURM job array (submitit) instead of running here; "
        "each runs this search on --storage for its share of --trials (exactly --trials in "
        "all); prints the job id and how to follow it",
    )
    g.add_argument(
        "--slurm-gpus",
        type=at_least(0),
        metavar="G",
        help="GPUs per worker (default 1; 0: CPU nodes)",
    )
    g.add_argument(
        "--slurm-time",
        type=slurm_minutes,
        metavar="T",
        help="time limit per worker, as SLURM writes it: 2:00:00, 90 (minutes), 1-12:00 "
        "(default 2:00:00); at the limit a worker's running trial fails as interrupted, "
        "and the next run of the same command goes on",
    )
    g.add_argument(
        "--slurm-partition", metavar="P", help="SLURM partition (default: the cluster's)"
    )


def slurm_request(a: argparse.Namespace) -> SlurmRequest | None:
    """The SLURM submission the parsed options ask for, or None to run here."""
    if a.slurm_array is None:
        for flag in ("gpus", "time", "partition"):
            if getattr(a, f"slurm_{flag}") is not None:
                raise UsageError(f"--slurm-{flag} goes with --slurm-array N (workers to submit)")
        return None
    gpus = 1 if a.slurm_gpus is None else a.slurm_gpus
    return SlurmRequest(a.slurm_array, gpus, a.slurm_time or 120, a.slurm_partition)


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "nas.search",
        "Search DenseNet architectures (growth rate, convs per block, compression) for the "
        "best validation accuracy per MAC on your images (--data; Fashion-MNIST by default). "
        "Re-running continues the study.",
        EPILOG,
    )
    p.add_argument("--trials", type=positive_int, default=100, help="trials to run (default 100)")
    p.add_argument("--study", default="densenet", help="study name (default densenet)")
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default sqlite:///studies/STUDY.db; postgresql://... works)",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="search space preset (default d2l, or a continued study's own space; see "
        "presets below)",
    )
    p.add_argument(
        "--budget",
        choices=list(BUDGETS),
        help="train budget per trial (default short, or a continued study's own; see "
        "budgets below)",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="tpe",
        help="Optuna sampler (default tpe: multivariate TPE with constant liar)",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
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
        "--halving",
        type=at_least(2),
        metavar="ETA",
        help="successive halving, asynchronous as ASHA: each new network trains on the "
        "budget's images / ETA^(R-1), and the best 1/ETA of each rung (non-dominated on "
        "accuracy at that rung and the costs, then the most spread out) train again on ETA "
        "times as many, up to the whole budget; --trials counts every run, and the front is "
        "the top rung's. Off by default, until measured against a uniform search of the "
        "same training (a continued study keeps its own; docs/search.md)",
    )
    p.add_argument(
        "--rungs",
        type=at_least(2),
        metavar="R",
        help=f"rungs of --halving, the top one the whole budget (default {DEFAULT_RUNGS})",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        help="peak learning rate, replacing the budget's (part of the stored budget)",
    )
    _add_parallel_options(p)
    _add_data_options(p)
    _add_objective_options(p)
    _add_space_options(p)
    add_slurm_options(p)
    return p


def _add_parallel_options(p: argparse.ArgumentParser) -> None:
    """How many trials run at once, and how a killed one is noticed."""
    p.add_argument(
        "--workers",
        type=auto_or(64),
        default="auto",
        help=f"trial processes on this machine (default auto: 1 on a CPU, "
        f"{WORKERS_PER_GPU} per GPU). On a CPU the cores are shared out among them, and "
        "results depend on the thread count: compare trials run with the same --workers",
    )
    p.add_argument(
        "--concurrency",
        type=auto_or(MAX_CONCURRENCY),
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
        "--heartbeat",
        type=positive_int,
        default=10,
        metavar="S",
        help="seconds between a running trial's heartbeats; a trial silent for 3 heartbeats "
        "(its worker killed) is failed and retried once (default 10)",
    )
    p.add_argument(
        "--storage-patience",
        type=non_negative_float,
        default=DEFAULT_PATIENCE_S,
        metavar="S",
        help="seconds a worker waits out a database that went away (a restart, a failover, "
        "a pooler's queue, a dropped connection), retrying with backoff while its trials "
        "go on training, before it stops in one line; 0: stop at the first error "
        f"(default {DEFAULT_PATIENCE_S:g}; docs/many-machines.md)",
    )


def _add_data_options(p: argparse.ArgumentParser) -> None:
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
    add_skip_bad_images(
        p,
        "stored with the study: a continued study, nas.refine and nas.train "
        "read its images the same way",
    )
    p.add_argument(
        "--augment",
        choices=("auto", *AUGMENTS),
        default="auto",
        help="crop-flip: a random crop of the image padded by 4 px and a left-right mirror "
        "per image, on the device (the CIFAR recipe); default auto: crop-flip for colour "
        "images, none for grey (part of the stored budget)",
    )


def _add_objective_options(p: argparse.ArgumentParser) -> None:
    """--objectives, and a --max-* option per cost limit of the table (nas.study.metrics)."""
    p.add_argument(
        "--objectives",
        metavar="A,B[,C]",
        help="what to optimise: accuracy and one or two of "
        + ", ".join(n for n in METRICS if n != "accuracy")
        + f" (default {','.join(DEFAULT_OBJECTIVES)}, or a continued study's own; see "
        "objectives below)",
    )
    for option, limit in limit_options().items():  # one per cost limit of the table
        p.add_argument(
            option,
            type=positive_or_none,
            metavar=limit.metavar,
            help=limit.help + " (a continued study keeps its own unless given; none removes it)",
        )
    p.add_argument("--max-mflops", help=argparse.SUPPRESS)  # renamed: refused with a hint
    p.add_argument(
        "--latency-device",
        choices=("cpu", "gpu"),
        help="where --max-latency-ms is measured: cpu (one thread, fp32; default, or a "
        "continued study's own) or gpu (the training GPU, bf16, CUDA graph; needs "
        "--concurrency 1)",
    )


def _add_space_options(p: argparse.ArgumentParser) -> None:
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


def parse_args(argv: list[str] | None) -> tuple[SearchArgs, SlurmRequest | None]:
    """The search the command line asks for, and its SLURM submission (None: run here)."""
    a = build_parser().parse_args(argv)
    if a.max_mflops is not None:
        raise UsageError(
            "--max-mflops is now --max-mmacs: the budget is in millions of multiply-adds "
            "(fvcore's 'flops'), half the FLOP count"
        )
    given = _given(a)
    preset = a.preset or "d2l"
    space = PRESETS[preset]
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
    budget = get_budget(a.budget or "short")
    if a.lr is not None:
        budget = replace(budget, lr=a.lr)
    if a.augment != "auto":
        budget = replace(budget, augment=a.augment)
    augment_auto = a.augment == "auto"
    try:
        objectives = parse_objectives(a.objectives or ",".join(DEFAULT_OBJECTIVES))
    except ValueError as e:
        raise UsageError(f"--objectives: {e}") from None
    if a.rungs is not None and a.halving is None:
        raise UsageError("--rungs goes with --halving ETA (successive halving)")
    halving = None if a.halving is None else Halving(a.halving, a.rungs or DEFAULT_RUNGS)
    options = vars(a)
    limits = Limits.of(
        a.latency_device or "cpu",
        **{m.name: _limit_value(options, o) for o, m in limit_options().items()},
    )
    spec = WorkerSpec(
        storage=a.storage or default_storage_url(a.study),
        study=check_study_name(a.study),
        space=space,
        budget=budget,
        sampler=a.sampler,
        seed=a.seed,
        device=a.device,
        data_dir=a.data_dir,
        workers=a.workers,
        heartbeat=a.heartbeat,
        storage_patience=a.storage_patience,
        concurrency=a.concurrency,
        objectives=objectives,
        limits=limits,
        data=a.data,
        skip_bad_images=a.skip_bad_images,
        halving=halving,
    )
    size_given = bool(a.image_size) or space.image_size != PRESETS[preset].image_size
    return SearchArgs(a.trials, spec, augment_auto, size_given, given), slurm_request(a)


def _limit_value(options: dict[str, Any], option: str) -> float | None:
    value = options[option[2:].replace("-", "_")]
    return None if value in (None, NONE) else value


def _given(a: argparse.Namespace) -> frozenset[str]:
    """The settings this command line gives (nas.parallel.run.continued takes a continued
    study's own for the others): space, budget, objectives, latency_device,
    skip_bad_images, halving and each cost limit's name."""
    options = vars(a)
    out = set()
    if any(options[k] for k in ("preset", "space", "growth_rate", "convs", "compression")):
        out.add("space")
    if a.image_size:
        out.add("space")
    if a.budget or a.lr is not None or a.augment != "auto":
        out.add("budget")
    if a.objectives:
        out.add("objectives")
    if a.latency_device:
        out.add("latency_device")
    if a.skip_bad_images:
        out.add("skip_bad_images")
    if a.halving is not None:
        out.add("halving")
    for option, limit in limit_options().items():
        if options[option[2:].replace("-", "_")] is not None:
            out.add(limit.name)
    return frozenset(out)


def slurm_task(args: SearchArgs) -> int:
    """One task of a --slurm-array job: the ordinary search, stopping as nas.search does
    (SLURM's SIGTERM at the limit: the running trial fails as interrupted)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # submitit's warning (nas.parallel.slurm)

    def body(_argv: list[str] | None) -> int:
        run_search(args)
        return 0

    status = run_cli("nas.search", body, None)
    if status:
        raise SystemExit(status)  # the task's exit status, as SLURM records it
    return 0


def _run(argv: list[str] | None) -> int:
    args, slurm = parse_args(argv)
    if slurm is not None:  # submitted instead: each array task runs run_search
        # the task by its module's name: under `python -m nas.search` this module is
        # __main__, which a task could not import; submitit pickles a function by name
        task = importlib.import_module("nas.search").slurm_task
        return submit_array(args, slurm, task)
    run_search(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.search", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
