"""A study's refinements: the studies nas.refine trained its networks again in (one per
train budget, linked from the source study), and the accuracies each run reached."""

from __future__ import annotations

import optuna

from nas.study.record import StudyRecord, TrialRecord

__all__ = [
    "linked_refinements",
    "refined_name",
    "refined_runs",
]


def refined_name(study: str, budget: str) -> str:
    return f"{study}-refined-{budget}"


def linked_refinements(study: optuna.Study) -> dict[str, dict[int, list[float]]]:
    """{budget name: {source trial number: [refined accuracy per seed]}} of every study
    that refines `study` in its storage (empty if none)."""
    out: dict[str, dict[int, list[float]]] = {}
    for summary in optuna.get_all_study_summaries(study._storage, include_best_trial=False):
        s = StudyRecord.from_attrs(summary.user_attrs)
        if s.source_study != study.study_name:
            continue
        linked = optuna.load_study(study_name=summary.study_name, storage=study._storage)
        out[s.budget["name"]] = refined_runs(linked)
    return out


def refined_runs(refined: optuna.Study) -> dict[int, list[float]]:
    """{source trial number: [accuracy of each finished seed]} of a linked study (every
    trained run: the source's budgets already held for the networks refined)."""
    runs: dict[int, list[float]] = {}
    done = refined.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    for t in done:
        r = TrialRecord.of(t)
        if r.trained and r.source_trial is not None:
            runs.setdefault(r.source_trial, []).append(t.values[0])
    return runs
