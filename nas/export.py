"""`python -m nas.export`: pick one architecture from a study and write it as JSON.

Picks, among complete, trained, feasible trials:
  accuracy       the highest validation accuracy (ties: the lower first cost objective,
                 MACs by default); in a study that knows its seed noise (nas.refine
                 --seeds N), the cheapest such trial whose accuracy is within that noise
                 of the best (nas.front.within_noise)
  knee           the Pareto-front trial farthest above the chord joining the front's two
                 ends, in accuracy vs log10 of the first cost objective (MACs by default;
                 nas.front); the most accurate if none is
  max-mmacs=N   the highest accuracy with at most N million MACs (fvcore)

The file carries every cost the trial measured (`costs`: MACs, parameters, CPU latency,
and on a GPU its latency, throughput and training memory, each with unit and device).
The file's "config" member is exactly the architecture JSON of nas.config, so
`python -m nas.cost best.json` and the model builder accept the file as it is.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

from nas.cli import UsageError, make_parser, public_url, run_cli
from nas.front import knee_index, mmacs, pareto_front, usable_trials, within_noise
from nas.metrics import DEFAULT_OBJECTIVES
from nas.storage import default_storage_url, load_study, open_storage

__all__ = ["SCHEMA", "export_record", "main", "pick_trial"]

SCHEMA = "nas.export/1"


def pick_trial(study: optuna.Study, pick: str) -> optuna.trial.FrozenTrial:
    trials = usable_trials(study)
    if not trials:
        raise UsageError(f"study {study.study_name!r} has no complete, trained, feasible trial")
    if pick == "accuracy":
        best = max(trials, key=lambda t: (t.values[0], -t.values[1]))
        noise = study.user_attrs.get("seed_stdev")  # measured by nas.refine --seeds N
        if not noise:
            return best
        # a noisy maximum is no pick: the cheapest whose accuracy the noise cannot tell
        # from the best's (each trial here is one run: nas.front.within_noise, seeds=1)
        near = [t for t in trials if within_noise(t.values[0], best.values[0], noise["stdev"])]
        return min(near, key=lambda t: (t.values[1], -t.values[0]))
    if pick == "knee":
        front = pareto_front(study)
        return front[knee_index([(t.values[0], t.values[1]) for t in front])]
    if pick.startswith("max-mmacs="):
        try:
            limit = float(pick.split("=", 1)[1])
        except ValueError:
            raise UsageError(f"--pick max-mmacs=N needs a number, got {pick!r}") from None
        within = [t for t in trials if mmacs(t) <= limit]
        if not within:
            least = min(mmacs(t) for t in trials)
            raise UsageError(
                f"no trained trial has at most {limit:g} MMACs (fvcore); the smallest has "
                f"{least:.6f} (exact: MACs are whole numbers)"
            )
        return max(within, key=lambda t: (t.values[0], -mmacs(t)))
    raise UsageError(f"unknown --pick {pick!r}; use accuracy, knee or max-mmacs=N")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("nas", "torch", "optuna", "fvcore"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def export_record(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, pick: str, storage_url: str
) -> dict[str, Any]:
    a = trial.user_attrs
    return {
        "schema": SCHEMA,
        "config": a["config"],
        "metrics": {
            "val_accuracy": trial.values[0],
            "mmacs_fvcore": mmacs(trial),
            "params": a.get("params"),
            "train_seconds": a.get("train_seconds"),
            "images_per_second": a.get("images_per_second"),
        },
        # every measured cost with its unit, device and runs (nas.measure)
        "costs": a.get("costs") or {},
        "objectives": study.user_attrs.get("objectives", list(DEFAULT_OBJECTIVES)),
        "trial": trial.number,
        "study": study.study_name,
        "pick": pick,
        "provenance": {
            "versions": _versions(),
            "device": a.get("device"),
            "budget": study.user_attrs.get("budget"),
            "space": study.user_attrs.get("space"),
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
        "--pick",
        default="knee",
        help="accuracy: the most accurate trial; knee (default): the front point farthest "
        "above the chord joining the front's ends, in accuracy vs log10 MACs; max-mmacs=N: "
        "the most accurate with at most N million multiply-adds (MACs, fvcore)",
    )
    args = p.parse_args(argv)
    if args.pick not in ("accuracy", "knee") and not args.pick.startswith("max-mmacs="):
        raise UsageError(f"unknown --pick {args.pick!r}; use accuracy, knee or max-mmacs=N")
    url = args.storage or default_storage_url(args.study)
    study = load_study(open_storage(url, must_exist=True), args.study)
    trial = pick_trial(study, args.pick)
    record = export_record(study, trial, args.pick, url)
    out = Path(args.out)
    try:
        if not out.parent.is_dir():
            raise UsageError(f"--out {out}: folder {out.parent} does not exist")
        out.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror or e}") from None
    m = record["metrics"]
    print(
        f"wrote {out}: trial {trial.number} ({args.pick}), val accuracy {m['val_accuracy']:.4f}, "
        f"{m['mmacs_fvcore']:,.1f} MMACs (fvcore), {m['params']:,} params"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.export", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
