"""Which run goes up a rung next in a halving search (nas.study.rungs), across a worker's
threads, workers and hosts.

Asynchronous, as ASHA (Li et al., "A System for Massively Parallel Hyperparameter
Tuning", 2020): before each trial a worker looks for a run to promote, from the rung
below the top down, and queues it (Optuna's enqueue_trial: the next trial a worker asks
for); no worker waits for a rung to fill. A rung's best 1/ETA are chosen by NSGA-II's
rule (nas.results.front.most_promising) on the study's objectives at that rung: whole
non-dominated fronts of (accuracy at the rung, costs), then the most spread-out members
of the next. Only trained runs within the study's cost limits count: a network over a
budget is never promoted. A network is promoted once: when two workers queue the same
promotion at the same moment, the earlier trial trains it and the later one ends pruned
at its start (nas.study.rungs.earlier_promotion); a promotion whose worker was killed is
retried once, as every trial is (nas.study.storage), and not queued again; one
interrupted (Ctrl-C, SIGTERM), which the heartbeat does not retry, is queued again.

Optuna's samplers see every run: a promoted network's higher-rung runs are queued with
its parameters, never sampled. The front (nas.results.front) is the top rung's alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import optuna

from nas.results.front import most_promising, over_limits
from nas.study.record import StudyRecord, TrialRecord, trial_attrs
from nas.study.rungs import Halving, rung_of

__all__ = ["promote", "to_promote"]


def to_promote(
    runs: Sequence[optuna.trial.FrozenTrial], halving: Halving, promoted: set[int]
) -> optuna.trial.FrozenTrial | None:
    """The run to promote next, from the rung below the top down, or None. `runs`: the
    study's complete, trained trials within its budgets; `promoted`: the numbers of the
    runs some trial was queued to promote (whatever became of that trial)."""
    for rung in reversed(range(halving.top)):
        at = [t for t in runs if rung_of(TrialRecord.of(t), halving) == rung]
        for i in most_promising([tuple(t.values) for t in at], len(at) // halving.eta):
            if at[i].number not in promoted:
                return at[i]
    return None


def promote(study: optuna.Study, halving: Halving) -> int | None:
    """Queue the study's next promotion, if any and if no trial is queued already (so that
    a run never ends with one left waiting); returns the number of the run promoted."""
    # A killed worker's trials fail, each with its retry queued, before this looks for a
    # queued trial (Optuna does it only as the trial starts: the retry would queue behind
    # a promotion queued here and could be left waiting at the end of the run).
    with warnings.catch_warnings():  # "experimental" since Optuna 2.9: noise to a user
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return None  # the next trial is queued already (a promotion, a retry, a reference)
    # promoted: whatever became of the promotion, but for one interrupted (Ctrl-C, SIGTERM,
    # a SLURM time limit), which the heartbeat does not retry: that one is queued again
    promoted = {
        r.promoted_from
        for t, r in ((t, TrialRecord.of(t)) for t in trials)
        if not (
            t.state == optuna.trial.TrialState.FAIL
            and (r.fail_reason or "").startswith("interrupted")
        )
    } - {None}
    attrs = StudyRecord.of(study)  # one read of the study, not one per trial
    runs = [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE
        and TrialRecord.of(t).trained
        and not over_limits(study, t, attrs)
    ]
    t = to_promote(runs, halving, promoted)  # type: ignore[arg-type]
    if t is None:
        return None
    r = TrialRecord.of(t)
    study.enqueue_trial(
        t.params,
        user_attrs=trial_attrs(
            config=r.config,  # sampled again from the parameters, as it was
            rung=rung_of(r, halving) + 1,
            promoted_from=t.number,
            rung_accuracies=r.rung_accuracies,  # the network's, up to t's rung
            seed=r.seed,
            reference=r.reference,  # the d2l chapter's network, up a rung
        ),
    )
    return t.number
