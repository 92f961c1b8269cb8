"""nas.parallel.workers: N processes on one SQLite study make exactly the trials asked for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest

from conftest import TINY
from nas.search import main


def test_four_workers_twelve_trials_none_lost_or_duplicated(
    tmp_path: Path, real_data_dir, capfd
) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    argv = [*TINY, "--trials", "12", "--workers", "4", "--study", "w", "--storage", url]
    assert main(argv) == 0
    study = optuna.load_study(study_name="w", storage=url)
    trials = study.trials
    assert len(trials) == 12
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 12
    assert sorted(t.number for t in trials) == list(range(12))
    assert len({t._trial_id for t in trials}) == 12
    trained = {t.number for t in trials if t.user_attrs["trained"]}
    for t in trials:  # trained, or a repeat of a network trained before it (its values)
        assert "config" in t.user_attrs
        assert t.number in trained or t.user_attrs["duplicate_of"] in trained
    out = capfd.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[w")]
    assert len(lines) == 12  # every trial reported once, by the worker that ran it
    numbers = Counter(int(ln.split()[2]) for ln in lines)
    assert sorted(numbers) == list(range(12)) and set(numbers.values()) == {1}
    workers = Counter(ln[:4] for ln in lines)
    assert len(workers) >= 2  # the work was actually shared
    assert "12 trials in" in out and "4 workers" in out


def test_second_run_adds_exactly_its_trials(tmp_path: Path, real_data_dir) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    for _ in range(2):
        assert (
            main([*TINY, "--trials", "3", "--workers", "2", "--study", "w", "--storage", url]) == 0
        )
    study = optuna.load_study(study_name="w", storage=url)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6
    assert len(study.trials) == 6


@pytest.mark.parametrize("sampler", ["tpe", "random", "nsga2"])
def test_seeded_draws_follow_the_trial_number(sampler: str) -> None:
    """--seed S: a trial's draw depends on S and its number only. A run reproduces on any
    host; two processes (or hosts) sharing a study with the same S draw different trials,
    where before hosts with the same worker index and trial count drew the same."""
    from nas.arch.space import PRESETS, sample
    from nas.parallel.workers import make_sampler

    space = PRESETS["d2l"]

    def draws(studies: list[optuna.Study], n: int) -> list[dict]:
        out = []
        for i in range(n):
            study = studies[i % len(studies)]
            trial = study.ask()
            sample(trial, space)
            study.tell(trial, (0.5, 1.0))
            out.append(trial.params)
        return out

    def fresh(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
        return optuna.create_study(
            study_name=name,
            storage=storage,
            directions=["maximize", "minimize"],
            sampler=make_sampler(sampler, 7, per_trial=True),
        )

    one = draws([fresh("a", optuna.storages.InMemoryStorage())], 6)
    again = draws([fresh("a", optuna.storages.InMemoryStorage())], 6)
    assert one == again  # reproducible
    assert len({str(p) for p in one}) == 6
    shared = optuna.storages.InMemoryStorage()
    first = fresh("s", shared)
    second = optuna.load_study(
        study_name="s", storage=shared, sampler=make_sampler(sampler, 7, per_trial=True)
    )
    together = draws([first, second], 6)  # two "hosts", one seed, alternating
    assert together == one  # trial numbers decide, not which process drew

    # Two trials in flight in one process (--concurrency): trial 1 is asked, and drawn,
    # between trial 0's ask and trial 0's draw; trial 0 still draws from its own seed.
    study = fresh("k", optuna.storages.InMemoryStorage())
    t0, t1 = study.ask(), study.ask()
    sample(t1, space)
    sample(t0, space)
    assert [t0.params, t1.params] == one[:2]


def test_trials_trained_eagerly_on_a_gpu_are_counted_and_the_first_warned_of() -> None:
    from nas.parallel.workers import Tally

    def trial(number: int, mode: str) -> optuna.trial.FrozenTrial:
        t = optuna.trial.create_trial(
            values=[0.5, 10.0], user_attrs={"trained": True, "step_mode": mode}
        )
        t.number = number
        return t

    counts = Tally()
    off = "eager: capture failed: RuntimeError: operation not permitted when stream is capturing"
    assert counts.count(trial(0, "cuda-graph")) is None
    assert counts.count(trial(1, "eager")) is None  # a CPU run: nothing to warn of
    warning = counts.count(trial(2, off))
    assert warning is not None and warning.startswith("warning: trial 2 trained eagerly")
    assert "operation not permitted" in warning
    assert counts.count(trial(3, off)) is None  # one warning per run
    assert counts == Tally(done=4, failed=0, duplicates=0, trained=4, eager=2)


def test_macs_over_a_limit_are_shown_with_the_decimals_that_tell_them_above_it() -> None:
    from nas.parallel.workers import _decimals_above

    assert _decimals_above(17.8, 7.0) == 1  # "17.8"
    assert _decimals_above(7.04, 7.0) == 2  # "7.04", not "7.0"
    assert _decimals_above(7.000012, 7.0) == 5  # "7.00001"
    assert _decimals_above(7.0000004, 7.0) == 6  # under a MAC over: to the last one
