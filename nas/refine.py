"""`python -m nas.refine`: confirm a study's front at a higher budget.

Picks the K most promising trained, feasible architectures of study S (NSGA-II's rule,
nas.results.front.most_promising), trains each at a higher budget, N seeds each, into a linked
study `S-refined-BUDGET` in the same storage (its own experiment record, the budget
included; each trial names its `source_trial` and `seed`), and prints per architecture
the cheap and the refined accuracy, Kendall tau between them over the K, which members
of S's front stay on the refined front, and with N >= 2 the seed noise and which refined
front points are within it of each other (nas.results.front.within_noise). Re-running continues
where it stopped. `nas.report --study S` draws the refined accuracies when the linked
study exists; `nas.export` and `nas.dashboard` work on the linked study as on any other.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import optuna

from nas.arch.space import SearchSpace
from nas.cli import make_parser, run_cli
from nas.data.dataset import load_data
from nas.errors import DataError, UsageError
from nas.parallel.workers import make_sampler, trial_line
from nas.results.front import (
    kendall_tau,
    most_promising,
    nondominated_fronts,
    pareto_front,
    pooled_stdev,
    usable_trials,
    within_noise,
)
from nas.results.refinements import refined_name, refined_runs
from nas.study import record
from nas.study.metrics import METRICS
from nas.study.objective import CATCH, Objective
from nas.study.record import StudyRecord, TrialRecord
from nas.study.storage import (
    default_storage_url,
    difference,
    load_study,
    open_or_create_study,
    open_storage,
)
from nas.training.budget import BUDGETS, TrainBudget, get_budget
from nas.training.fit import pick_device
from nas.training.step import precision

if TYPE_CHECKING:
    import torch

__all__ = [
    "main",
]


def _parser() -> argparse.ArgumentParser:
    p = make_parser(
        "nas.refine",
        "Confirm a study's front at a higher budget: train its K most promising trained "
        "architectures again (N seeds each) into the linked study STUDY-refined-BUDGET, and "
        "print how their ranking holds. Re-running continues where it stopped.",
    )
    p.add_argument("--study", required=True, help="the study to refine")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument(
        "--budget", choices=list(BUDGETS), default="long", help="higher budget (default long)"
    )
    p.add_argument("--top", type=int, default=8, metavar="K", help="architectures (default 8)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds each (default 1)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="where the study's images are now, if they moved (default: where the search "
        "read them); refused unless they are the same images",
    )
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX .gz files")
    return p


def _run(argv: list[str] | None) -> int:
    a = _parser().parse_args(argv)
    if not 2 <= a.top <= 1000:
        raise UsageError(f"--top must be in 2..1000, got {a.top}")
    if not 1 <= a.seeds <= 20:
        raise UsageError(f"--seeds must be in 1..20, got {a.seeds}")
    url = a.storage or default_storage_url(a.study)
    storage = open_storage(url, must_exist=True)
    source = load_study(storage, a.study, searched=True)
    s = StudyRecord.of(source)
    if s.budget["name"] == a.budget:
        raise UsageError(f"study {a.study!r} already has budget {a.budget!r}: pick a higher one")
    trials = usable_trials(source)
    if len(trials) < 2:
        raise UsageError(f"study {a.study!r} has {len(trials)} trained trial(s): nothing to rank")
    # promise in the study's own objectives: accuracy and its one or two costs
    chosen = [trials[i] for i in most_promising([tuple(t.values) for t in trials], a.top)]

    try:
        device = pick_device(a.device)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data = study_data(source, a.data, a.data_dir, device)
    refined = _linked_study(storage, source, a.budget, device, s.data)
    queued = _queue(refined, chosen, a.seeds)
    print(
        f"refining {len(chosen)} of {len(trials)} trained trials of {a.study!r} at budget "
        f"{a.budget!r}, {a.seeds} seed(s) each, into {refined.study_name!r}: {queued} runs "
        "to go",
        flush=True,
    )
    _train_queued(refined, source, data.to(device))
    print(summary(source, chosen, refined, a.seeds))
    return 0


def study_data(
    study: optuna.Study, source: str | None, data_dir: str | None, device: torch.device
) -> Any:
    """The images `study` was searched on (its "data_record", or `source`), refused unless
    their fingerprint is the study's."""
    s = StudyRecord.of(study)
    source = source or s.data_record.get("source")
    skip = bool(s.data_record.get("skip_bad_images"))  # read as the search read them
    try:
        data = load_data(source, data_dir, device, skip)
    except DataError as e:
        raise UsageError(str(e)) from None
    if s.data != data.fingerprint:
        raise UsageError(
            f"the images at {data.source} are not those study {study.study_name!r} was "
            f"searched on (their fingerprint differs: {difference(s.data, data.fingerprint)}); "
            "point --data at the same images"
        )
    return data


def _linked_study(
    storage: optuna.storages.BaseStorage,
    source: optuna.Study,
    budget: str,
    device: torch.device,
    data_fingerprint: dict,
) -> optuna.Study:
    """The study S-refined-BUDGET in S's storage, with S's space, objectives and budgets
    recorded for the reader (created if new)."""
    s = StudyRecord.of(source)
    experiment = record.experiment(
        s.space,
        s.objectives,
        s.limits,
        precision(device),
        data_fingerprint,
        # the source's augmentation: refined runs train as the search's did, only longer
        replace(get_budget(budget), augment=s.budget["augment"]).to_dict(),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = refined_name(source.study_name, budget)
    refined, created = open_or_create_study(storage, name, make_sampler("random", 0), experiment)
    if created:
        # the source's data: a report or an export of the refined study names it too
        record.write_study(refined, source_study=source.study_name, data_record=s.data_record)
    return refined


def _queue(refined: optuna.Study, chosen: list[optuna.trial.FrozenTrial], seeds: int) -> int:
    """Queue each chosen network at each seed not yet run or queued; return the queue."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING)
    have = {
        (r.source_trial, r.seed)
        for r in map(TrialRecord.of, refined.get_trials(deepcopy=False, states=states))
    }
    for t in chosen:
        for seed in range(seeds):
            if (t.number, seed) not in have:
                refined.enqueue_trial(
                    t.params, user_attrs=record.trial_attrs(source_trial=t.number, seed=seed)
                )
    return len(refined.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _train_queued(refined: optuna.Study, source: optuna.Study, data: Any) -> None:
    """Train every queued run, a line each."""

    def on_trial(_: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        r = TrialRecord.of(t)
        print(f"{trial_line(t)}  (source trial {r.source_trial}, seed {r.seed})", flush=True)

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    s = StudyRecord.of(refined)
    objectives = s.objectives
    # No budgets here: every chosen network was within the source's, and a cost timed
    # again (a latency) must not keep a network from its higher-budget training.
    objective = Objective(
        SearchSpace.from_dict(StudyRecord.of(source).space),
        TrainBudget.from_dict(s.budget),
        data,
        objectives=objectives,
        gpu_timing="latency_gpu" in {METRICS[n].key for n in objectives},
    )

    def queued_only(trial: optuna.Trial) -> tuple[float, ...]:
        if TrialRecord.of(trial).source_trial is None:  # another process took the last one
            raise optuna.TrialPruned("nothing queued")
        return objective(trial)

    waiting = (optuna.trial.TrialState.WAITING,)
    while refined.get_trials(deepcopy=False, states=waiting):
        refined.optimize(queued_only, n_trials=1, catch=CATCH, callbacks=[on_trial])


def summary(
    source: optuna.Study,
    chosen: list[optuna.trial.FrozenTrial],
    refined: optuna.Study,
    seeds: int,
) -> str:
    """The table: cheap vs refined accuracy, tau, who stays on the front, the noise."""
    runs = refined_runs(refined)
    done = [t for t in chosen if t.number in runs]
    if not done:
        return "no refined run finished yet"
    mean = {t.number: statistics.fmean(runs[t.number]) for t in done}
    n = {t.number: len(runs[t.number]) for t in done}  # the seeds actually run, not asked
    noise = pooled_stdev([runs[t.number] for t in done])
    pooled, dof = noise if noise is not None else (None, 0)
    seeded = sum(1 for t in done if n[t.number] >= 2)
    if pooled is not None:
        noise_record = {"stdev": pooled, "seeds": seeds, "of": seeded, "dof": dof}
        record.write_study(refined, seed_stdev=noise_record)
    old_front = {t.number for t in pareto_front(source)}
    # stays on / joins the front in the study's own objectives: refined mean, same costs
    points = [(mean[t.number], *t.values[1:]) for t in done]
    new_front = {done[i].number for i in nondominated_fronts(points)[0]}
    s = StudyRecord.of(source)
    budget = StudyRecord.of(refined).budget["name"]
    cost = METRICS[s.objectives[1]]
    lines = [
        f"{'trial':>5}  {cost.label:>16}  {s.budget['name']:>8}  {budget + ' (mean)':>12}  front"
    ]
    for t in sorted(done, key=lambda t: t.values[1]):
        where = (
            ("stays" if t.number in new_front else "drops off")
            if t.number in old_front
            else ("joins" if t.number in new_front else "-")
        )
        spread = f" +-{statistics.stdev(runs[t.number]):.4f}" if len(runs[t.number]) > 1 else ""
        lines.append(
            f"{t.number:>5}  {t.values[1]:>16.4g}  {t.values[0]:>8.4f}  "
            f"{mean[t.number]:>12.4f}{spread}  {where}"
        )
    if len(done) >= 3:
        tau = kendall_tau([t.values[0] for t in done], [mean[t.number] for t in done])
        lines.append(
            f"Kendall tau between the two budgets over these {len(done)}: {tau:+.2f} "
            "(1: the same order; 0: no relation)"
        )
    else:  # over two architectures tau can only be +1 or -1
        lines.append(f"Kendall tau: needs at least 3 refined architectures ({len(done)} here)")
    if pooled is not None:
        front = sorted((t for t in done if t.number in new_front), key=lambda t: t.values[1])
        ties = [
            f"{x.number}~{y.number}"
            for i, x in enumerate(front)
            for y in front[i + 1 :]
            if within_noise(mean[x.number], mean[y.number], pooled, n[x.number], n[y.number])
        ]
        lines.append(
            f"seed noise at {budget}: stdev {pooled:.4f} per run (pooled over {seeded} "
            f"architectures, {dof} degrees of freedom); refined front points within noise "
            f"of each other: {', '.join(ties) or 'none'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.refine", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
