"""`python -m nas.report`: one self-contained HTML page of a study's results.

From pandas data frames built from the study, in the study's own objectives (accuracy
and one or two of MACs, parameters, CPU or GPU latency, training memory): accuracy
against each cost objective (the front; dominated trials; networks not trained because
over a budget on a strip below, at no accuracy; each budget a dashed line; the d2l
reference; refined runs with their seed noise; with three objectives, the 3-D front
marked on each 2-D view), each measured cost against MACs with their rank correlation
(and a caution where costs were timed beside other trials), the hypervolume after each
trial (two objectives), parameter importances per objective, how accuracy and MACs
follow k, convs and theta, and the table of Pareto trials (also as CSV beside the
page). Plotly's JavaScript is inlined: the page opens offline. The page and each Pareto
trial's architecture JSON are also stored as Optuna artifacts, one click away in
optuna-dashboard (`python -m nas.dashboard`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna

from nas.cli import make_parser, run_cli
from nas.errors import UsageError
from nas.results.artifacts import attach_trial_file, default_artifact_dir, replace_study_file
from nas.results.front import (
    pareto_front,
)
from nas.results.page import write_report
from nas.study.record import TrialRecord
from nas.study.storage import default_storage_url, load_study, open_storage

__all__ = [
    "main",
]


def _run(argv: list[str] | None) -> int:
    p = make_parser("nas.report", __doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument("--out", help="HTML file to write (default dashboards/STUDY.html)")
    p.add_argument(
        "--format",
        choices=("csv", "parquet"),
        help="also write the full trial table (parquet needs pyarrow: pip install pyarrow)",
    )
    p.add_argument("--artifacts", help="artifact folder (default studies/STUDY-artifacts)")
    p.add_argument("--no-artifacts", action="store_true", help="do not store artifacts")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.storage or default_storage_url(args.study)
    study = load_study(open_storage(url, must_exist=True), args.study, searched=True)
    out = Path(args.out or f"dashboards/{args.study}.html")
    try:
        written = write_report(study, out, args.format)
    except OSError as e:
        raise UsageError(f"cannot write the report: {e.strerror or e}") from None
    if not args.no_artifacts:
        folder = Path(args.artifacts) if args.artifacts else default_artifact_dir(args.study)
        replace_study_file(study, folder, out)
        for t in pareto_front(study):
            data = json.dumps(TrialRecord.of(t).config, indent=2) + "\n"
            attach_trial_file(study, t, folder, f"config-trial{t.number}.json", data)
        written["artifacts"] = folder
    for kind, path in written.items():
        print(f"{kind:<11} {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.report", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
