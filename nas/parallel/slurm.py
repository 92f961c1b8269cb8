"""`nas.search ... --slurm-array N`: N workers of one study as one SLURM job array.

Submitted with submitit; each array task runs the ordinary search (nas.parallel.run.run_search)
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

import contextlib
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from nas.errors import UsageError, first_line
from nas.parallel.run import SearchArgs
from nas.study.storage import connection_note, open_storage
from nas.study.urls import public_url

__all__ = ["EXECUTOR_ENV", "SlurmRequest", "shares", "submit_array"]

EXECUTOR_ENV = "NAS_SLURM_EXECUTOR"  # "slurm" (default) or "local"
JOBS_DIR = Path("slurm")  # slurm/STUDY/: the tasks' pickled arguments and logs


@dataclass(frozen=True)
class SlurmRequest:
    array: int  # workers: array tasks
    gpus: int  # GPUs per task
    minutes: int  # time limit per task
    partition: str | None


def shares(trials: int, workers: int) -> list[int]:
    """--trials split between the workers: sizes differ by at most one, and add up."""
    each, extra = divmod(trials, workers)
    return [each + (i < extra) for i in range(workers)]


def _backend(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0].lower()


def submit_array(
    args: SearchArgs, request: SlurmRequest, task: Callable[[SearchArgs], int]
) -> int:
    """Submit `request`'s job array of `task` after checking it (each array task runs
    task(args) for its share of args.trials); print its id and how to follow it."""
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
            jobs = executor.map_array(task, [replace(args, trials=k) for k in split])
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
