"""`nas.search ... --slurm-array N`: N workers of one study as one SLURM job array.

Submitted with submitit; each array task runs the ordinary search (nas.search.run_search)
on the shared storage for its share of --trials, the way hosts sharing a study each bring
their own --trials; the shares add up to --trials, so exactly --trials trials run in all.
The storage must be a database server (PostgreSQL): a SQLite file on a shared filesystem
is not safe for many hosts. Each task stops like any nas.search: SLURM's SIGTERM at the
time limit (or on preemption) fails its running trial as "interrupted (SIGTERM)". submitit
alone would log and ignore SIGTERM, and on its own warning signal (SIGUSR2, 90 s before
the limit) raise an error inside the running trial, or requeue the task and leave the
trial RUNNING; a task here handles SIGTERM as nas.search does and ignores SIGUSR2.
`NAS_SLURM_EXECUTOR=local` runs the array's tasks as processes on this machine with
submitit's LocalExecutor (the same path, without SLURM: for a try, and the tests).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from nas.cli import UsageError, first_line, public_url, run_cli
from nas.study.storage import connection_note, open_storage

if TYPE_CHECKING:
    from nas.search import SearchArgs

__all__ = ["EXECUTOR_ENV", "SlurmRequest", "add_slurm_options", "slurm_request", "submit_array"]

EXECUTOR_ENV = "NAS_SLURM_EXECUTOR"  # "slurm" (default) or "local"
JOBS_DIR = Path("slurm")  # slurm/STUDY/: the tasks' pickled arguments and logs
# SLURM's --time forms: MINUTES, MINUTES:SECONDS, H:MM:SS, D-H, D-H:MM, D-H:MM:SS
TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass(frozen=True)
class SlurmRequest:
    array: int  # workers: array tasks
    gpus: int  # GPUs per task
    minutes: int  # time limit per task
    partition: str | None


def slurm_minutes(text: str) -> int:
    """An argparse type: a SLURM time limit (2:00:00, 90, 1-12:00, ...) in whole minutes."""
    m = TIME.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"expected a SLURM time such as 2:00:00, 90 (minutes) or 1-12:00, got {text!r}"
        )
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H[:MM[:SS]]
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:  # H:MM:SS
        hours, minutes, seconds = a, b, c
    else:  # MINUTES[:SECONDS]
        hours, minutes, seconds = 0, a, b or 0
    total = math.ceil(((days or 0) * 24 + hours) * 60 + minutes + seconds / 60)
    if total < 1:
        raise argparse.ArgumentTypeError(
            f"expected a time limit of a minute or more, got {text!r}"
        )
    return total


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return int(text)

    return parse


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "SLURM (one command submits the whole search; the storage must be PostgreSQL)"
    )
    g.add_argument(
        "--slurm-array",
        type=_count(1),
        metavar="N",
        help="submit N workers as one SLURM job array (submitit) instead of running here; "
        "each runs this search on --storage for its share of --trials (exactly --trials in "
        "all); prints the job id and how to follow it",
    )
    g.add_argument(
        "--slurm-gpus",
        type=_count(0),
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


def shares(trials: int, workers: int) -> list[int]:
    """--trials split between the workers: sizes differ by at most one, and add up."""
    each, extra = divmod(trials, workers)
    return [each + (i < extra) for i in range(workers)]


def _backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def submit_array(args: SearchArgs) -> int:
    """Submit args.slurm's job array after checking it; print its id and how to follow it."""
    request = args.slurm
    assert request is not None
    spec, n = args.spec, request.array
    if _backend(spec.storage) == "sqlite":
        raise UsageError(
            "--slurm-array needs a database server, not a SQLite file: a file database on a "
            "shared filesystem is not safe for many hosts; use --storage "
            "postgresql://USER@DBHOST/DB (docs/many-machines.md)"
        )
    if n > args.trials:
        raise UsageError(f"--slurm-array {n} is more workers than --trials {args.trials}")
    cluster = os.environ.get(EXECUTOR_ENV, "slurm")
    if cluster not in ("slurm", "local"):
        raise UsageError(f"{EXECUTOR_ENV}={cluster!r}: expected slurm or local")
    if cluster == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise UsageError(
            "--slurm-array submits with sbatch and srun, which are not on this machine's "
            f"PATH: run it on the cluster's login node ({EXECUTOR_ENV}=local runs the "
            "workers here)"
        )
    storage = open_storage(spec.storage)  # reachable, before anything is submitted
    per_task = spec.workers or max(1, request.gpus)  # --workers auto: one per GPU
    note = connection_note(storage, n * per_task, max(1, spec.concurrency))
    if note:
        print(f"note: {note}", flush=True)
    import submitit  # only here: a plain search does not need it

    folder = JOBS_DIR / spec.study
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)  # the tasks' arguments hold the storage URL
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(
        name=f"nas-{spec.study}",
        timeout_min=request.minutes,
        gpus_per_node=request.gpus,
        slurm_array_parallelism=n,
        **({"slurm_partition": request.partition} if request.partition else {}),
    )
    split = shares(args.trials, n)
    try:  # submitit copies sbatch's own stderr to ours: the error line below says it once
        with contextlib.redirect_stderr(io.StringIO()):
            jobs = executor.map_array(_task, [replace(args, trials=k, slurm=None) for k in split])
    except (
        submitit.core.utils.UncompletedJobError,
        submitit.core.utils.FailedSubmissionError,
    ) as e:
        raise UsageError(f"sbatch refused the job array: {first_line(e)}") from None
    ids = [job.job_id for job in jobs]
    array = ids[0].split("_")[0]
    shown = public_url(spec.storage)
    hours, minutes = divmod(request.minutes, 60)
    each = sorted(set(split), reverse=True)
    print(
        f"submitted job {array}: {n} workers of study {spec.study!r}, {args.trials} trials "
        f"in all ({' or '.join(map(str, each))} each), {request.gpus} GPU"
        f"{'s' if request.gpus != 1 else ''} and {hours}:{minutes:02d}:00 each; logs in "
        f"{folder}/\n"
        + (f"follow: squeue -j {array}\n" if cluster == "slurm" else f"local jobs: {ids}\n")
        + f"report: python -m nas.report --study {spec.study} --storage {shown}\n"
        f"browse: optuna-dashboard {shown}"
    )
    return 0


def _task(args: SearchArgs) -> int:
    """One array task: the ordinary search, stopping as nas.search does (see above)."""
    from nas.search import run_search

    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # submitit's warning; the limit's SIGTERM

    def body(_argv: list[str] | None) -> int:
        run_search(args)
        return 0

    status = run_cli("nas.search", body, None)
    if status:
        raise SystemExit(status)  # the task's exit status, as SLURM records it
    return 0
