"""`python -m nas.dashboard`: open a study in optuna-dashboard, with its artifacts.

The same as `optuna-dashboard STORAGE --artifact-dir studies/STUDY-artifacts`, after
checking that the study exists. Objective names come from the study's metric names;
infeasible (over a budget: MACs, parameters, latency, memory) trials carry the constraint
format optuna-dashboard 0.21 reads (see nas.study.objective); `python -m nas.report` stores the
report page and the Pareto trials' architecture JSON as artifacts.

Optuna keeps a finished trial's constraints as they were when it ran, so after a study's
budgets change the dashboard would mark trials by the old ones, while nas.report and
nas.export judge by today's. nas.dashboard then writes the study's note (shown on its
page) saying so, with today's budgets and the trials the two disagree on; a note a user
wrote is left alone and the same is printed instead. The same note says, of a halving
search (nas.study.rungs), that the dashboard's front takes every rung's runs where
nas.report's takes the top rung's.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import optuna

from nas.cli import make_parser, run_cli
from nas.errors import UsageError
from nas.results.artifacts import default_artifact_dir
from nas.results.front import over_limits
from nas.study.metrics import Limits
from nas.study.record import StudyRecord
from nas.study.rungs import Halving, rung_counts
from nas.study.storage import default_storage_url, load_study, open_storage
from nas.training.budget import TrainBudget

__all__ = ["budgets_note", "main", "rungs_note", "study_note"]

NOTE_MARK = "_Written by nas.dashboard, and again at each start; a note of your own replaces it._"


def budgets_note(study: optuna.Study) -> str | None:
    """The study note on its budgets (Markdown), or None while they never changed."""
    s = StudyRecord.of(study)
    if len(s.limits_history) <= 1:
        return None
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    shown_over = {t.number for t in done if any(v > 0 for v in t.constraints.values())}
    over_now = {t.number for t in done if over_limits(study, t, s)}
    now_ok, now_over = sorted(shown_over - over_now), sorted(over_now - shown_over)
    lines = [
        "**The budgets changed since some trials ran.** This dashboard marks each trial "
        "feasible or infeasible by the budgets it ran under (Optuna keeps a finished "
        "trial's constraints as they were); `nas.report` and `nas.export` judge every "
        f"trial by today's: **{Limits.from_dict(s.limits).describe()}**.",
    ]
    if now_ok:
        lines.append(f"- within today's budgets, shown infeasible here: {_numbers(now_ok)}")
    if now_over:
        lines.append(f"- over today's budgets, shown feasible here: {_numbers(now_over)}")
    if not (now_ok or now_over):
        lines.append("- for every complete trial the two agree.")
    return "\n\n".join(lines)


def rungs_note(study: optuna.Study) -> str | None:
    """The study note on a halving search's rungs (Markdown), or None for a search without."""
    s = StudyRecord.of(study)
    halving = Halving.of(s)
    if halving is None:
        return None
    counts = ", ".join(f"rung {i}: {n}" for i, (n, _) in enumerate(rung_counts(study, halving)))
    return (
        f"**This search halves** ({halving.describe(TrainBudget.from_dict(s.budget))}). "
        "This dashboard's Pareto front takes every run, whatever its rung: the accuracy of "
        "a lower rung's shorter run beside the whole budget's. `nas.report` and `nas.export` "
        f"take the top rung's alone (rung {halving.top}). A run's rung is its `rung` user "
        f"attribute. Networks trained per rung: {counts}."
    )


def study_note(study: optuna.Study) -> str | None:
    """What the dashboard shows otherwise than nas.report (Markdown), or None."""
    parts = [p for p in (budgets_note(study), rungs_note(study)) if p]
    return "\n\n".join([*parts, NOTE_MARK]) if parts else None


def _numbers(ns: list[int]) -> str:
    return ("trial " if len(ns) == 1 else "trials ") + ", ".join(map(str, ns))


def _say_budgets(study: optuna.Study) -> None:
    """Write study_note as the study's note (unless a user's own note is there) and print
    its gist."""
    from optuna_dashboard import get_note, save_note

    body = study_note(study)
    if body is None:
        return
    mine = get_note(study)
    if not mine.strip() or mine.endswith(NOTE_MARK):
        save_note(study, body)
        where = "the study's note on the dashboard says which"
    else:
        where = "the study's note is your own, left as it is"
    s = StudyRecord.of(study)
    if budgets_note(study) is not None:
        print(
            "note: the budgets changed since some trials ran: the dashboard marks trials by "
            "the budgets they ran under, nas.report and nas.export by today's "
            f"({Limits.from_dict(s.limits).describe()}); {where}",
            flush=True,
        )
    if s.halving:
        print(
            "note: this search halves: the dashboard's Pareto front takes the runs of every "
            "rung, nas.report and nas.export the top rung's alone (a run's rung: its `rung` "
            f"user attribute); {where.replace('which', 'so')}",
            flush=True,
        )


def _run(argv: list[str] | None) -> int:
    p = make_parser("nas.dashboard", __doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--artifacts", help="artifact folder (default studies/STUDY-artifacts)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    url = args.storage or default_storage_url(args.study)
    storage = open_storage(url, must_exist=True)
    study = load_study(storage, args.study)  # a clear error for a study that is not there
    _say_budgets(study)

    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    try:  # bind once first: a taken port or a foreign host is one line, before any banner
        socket.create_server((args.host, args.port)).close()
    except OSError as e:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (try another --port)"
        ) from None
    folder = Path(args.artifacts) if args.artifacts else default_artifact_dir(args.study)
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"optuna-dashboard for study {args.study!r}: http://{args.host}:{args.port}/", flush=True
    )
    run_server(
        storage,
        host=args.host,
        port=args.port,
        artifact_store=FileSystemArtifactStore(str(folder)),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.dashboard", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
