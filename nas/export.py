"""`python -m nas.export`: pick one architecture from a study and write it as JSON.

Picks, among complete, trained trials within the study's current budgets:
  accuracy        the highest mean accuracy, over the runs of the study's highest-budget
                  refinement (nas.refine, a linked study in the same storage) where it
                  has one, else one run each; where the seed noise is measured (pooled
                  over the refined runs, or recorded on the study), the cheapest in the
                  first cost objective whose mean the noise cannot tell from the best
                  (nas.results.front.within_noise)
  knee            (two objectives) the Pareto-front trial farthest above the chord
                  joining the front's two ends, in accuracy vs log10 of the cost
                  objective (nas.results.front); the most accurate if none is
  max-mmacs=N     the highest accuracy with at most N million MACs (fvcore); likewise
  max-params=N    (a count, as nas.search --max-params), max-latency-ms=N (the study's
  ...             latency objective, else its latency budget's device, else CPU) and
                  max-memory-mb=N
Every pick prints and stores (`working`) its rule, the figures it used (mean, sigma, n)
and the runner-up.

The file carries every cost the trial measured (`costs`: MACs, parameters, CPU latency,
and on a GPU its latency, throughput and training memory, each with unit and device).
Where the study is about CPU latency (an objective, a budget, or a max-latency-ms pick),
the pick is also timed as nas ships it (nas.deploy.timing: its AOTInductor CPU package in
a fresh process, 1 thread, batch 1, uint8 in; about half a minute to compile), printed
beside the search's eager figure, stored as `costs.latency_cpu_shipped`, and said if it
misses the budget.
The file's "config" member is exactly the architecture JSON of nas.arch.config, so
`python -m nas.cost best.json` and the model builder accept the file as it is.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

from nas.arch.config import ArchConfig
from nas.cli import make_parser, run_cli
from nas.deploy.artifact import image_shape
from nas.deploy.timing import describe_shipped, shipped_latency
from nas.errors import UsageError, first_line
from nas.results.picks import Pick, describe_pick, latency_key, parse_limit_pick, pick_trial
from nas.study.metrics import Limits
from nas.study.record import StudyRecord, TrialRecord
from nas.study.storage import default_storage_url, load_study, open_storage
from nas.study.urls import public_url

__all__ = [
    "SCHEMA",
    "export_record",
    "main",
]

SCHEMA = "nas.export/1"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("nas", "torch", "optuna", "fvcore"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def export_record(
    study: optuna.Study, chosen: Pick, pick: str, storage_url: str
) -> dict[str, Any]:
    trial, a, s = chosen.trial, TrialRecord.of(chosen.trial), StudyRecord.of(study)
    return {
        "schema": SCHEMA,
        "config": a.config,
        "metrics": {
            "val_accuracy": trial.values[0],
            "mmacs_fvcore": a.mmacs,
            "params": a.params,
            "train_seconds": a.train_seconds,
            "images_per_second": a.images_per_second,
        },
        # every measured cost with its unit, device and runs (nas.training.measure)
        "costs": a.costs,
        "objectives": list(s.objectives),
        # the images it was searched on (nas.data.dataset: source, shape, classes,
        # normalisation): nas.train trains on them by default
        "data": s.data_record,
        "trial": trial.number,
        "study": study.study_name,
        "pick": pick,
        # a halving search's: the rung the network reached (the top: the whole budget),
        # its accuracy at every rung, and the search's rungs (nas.study.rungs)
        **(
            {"rung": a.rung, "rung_accuracies": list(a.rung_accuracies), "halving": s.halving}
            if s.halving
            else {}
        ),
        "working": chosen.working,
        "provenance": {
            "versions": _versions(),
            "device": a.device,
            "budget": s.budget,
            "space": s.space,
            "storage": public_url(storage_url),
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }


def _run(argv: list[str] | None) -> int:
    p = make_parser("nas.export", __doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument(
        "--time-shipped",
        choices=("auto", "yes", "no"),
        default="auto",
        help="time the pick's CPU package as shipped (AOTInductor, fresh process, 1 thread, "
        "batch 1, uint8 in; compiling it takes about half a minute): auto (default) where the "
        "study is about CPU latency (an objective, a budget or a max-latency-ms pick)",
    )
    p.add_argument(
        "--pick",
        default="knee",
        help="accuracy: the most accurate trial, by its refined runs (nas.refine) where the "
        "study has them, the cheapest within the measured seed noise of the best; knee "
        "(default; studies of two objectives): the front point farthest above the chord "
        "joining the front's ends, in accuracy vs log10 of the cost; max-mmacs=N, "
        "max-params=N (a count), max-latency-ms=N (the study's latency), max-memory-mb=N: "
        "the most accurate within that budget. The output and the file's 'working' say "
        "how the trial was chosen and which came next",
    )
    args = p.parse_args(argv)
    if args.pick not in ("accuracy", "knee"):
        parse_limit_pick(args.pick)  # a bad pick is refused before the study is opened
    url = args.storage or default_storage_url(args.study)
    study = load_study(open_storage(url, must_exist=True), args.study, searched=True)
    chosen = pick_trial(study, args.pick)
    record = export_record(study, chosen, args.pick, url)
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    shipped = None
    if args.time_shipped == "yes" or (args.time_shipped == "auto" and _about_cpu(study, args)):
        shipped = _time_shipped(study, chosen, args.pick, record)
    try:
        out.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    print(f"wrote {out} ({args.pick}): {describe_pick(study, chosen)}")
    if shipped:
        print(shipped)
    return 0


def _cpu_budget(study: optuna.Study, pick: str) -> float | None:
    """The CPU latency budget the pick answers to: a max-latency-ms pick's, else the
    study's own, in ms."""
    s = StudyRecord.of(study)
    if pick.startswith("max-latency-ms=") and latency_key(study) == "latency_cpu":
        return parse_limit_pick(pick)[1]
    return Limits.from_dict(s.limits).get("latency_cpu")


def _about_cpu(study: optuna.Study, args: argparse.Namespace) -> bool:
    s = StudyRecord.of(study)
    return "latency-cpu" in s.objectives or _cpu_budget(study, args.pick) is not None


def _time_shipped(study: optuna.Study, chosen: Pick, pick: str, record: dict) -> str:
    """Time the pick as shipped; store it in `record`; the line that says it."""
    a = TrialRecord.of(chosen.trial)
    config = ArchConfig.from_dict(a.config)
    stored = StudyRecord.of(study).data_record.get("shape")
    if not stored:  # the images' size is what the package is timed at: not the network's
        return "note: the CPU latency as shipped is not measured: the study records no image size"
    shape = image_shape(*stored)
    budget = _cpu_budget(study, pick)
    print(
        f"timing trial {chosen.trial.number} as shipped (compiling its AOTInductor CPU "
        "package, about half a minute) ...",
        flush=True,
    )
    try:
        m = shipped_latency(config, shape, budget)
    except RuntimeError as e:
        return f"note: the CPU latency as shipped is not measured: {first_line(e)}"
    record["costs"]["latency_cpu_shipped"] = m.to_dict()
    line = f"CPU latency {describe_shipped(m, shape)}"
    eager = a.costs.get("latency_cpu")
    if eager:
        line += (
            f"; the search timed the eager network at {eager['value']:.3g} ms "
            f"({m.value / eager['value']:.2f}x)"
        )
    if budget is not None:
        verdict = "within" if m.value <= budget else "OVER"
        line += f"; {verdict} the {budget:g} ms budget as shipped"
    return line


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.export", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
