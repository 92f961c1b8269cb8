"""nas.workers: N processes on one SQLite study make exactly the trials asked for."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna

from conftest import TINY
from nas.search import main


def test_four_workers_twenty_trials_none_lost_or_duplicated(
    tmp_path: Path, real_data_dir, capfd
) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    argv = [*TINY, "--trials", "20", "--workers", "4", "--study", "w", "--storage", url]
    assert main(argv) == 0
    study = optuna.load_study(study_name="w", storage=url)
    trials = study.trials
    assert len(trials) == 20
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 20
    assert sorted(t.number for t in trials) == list(range(20))
    assert len({t._trial_id for t in trials}) == 20
    assert all(t.user_attrs["trained"] and "config" in t.user_attrs for t in trials)
    out = capfd.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[w")]
    assert len(lines) == 20  # every trial reported once, by the worker that ran it
    numbers = Counter(int(ln.split()[2]) for ln in lines)
    assert sorted(numbers) == list(range(20)) and set(numbers.values()) == {1}
    workers = Counter(ln[:4] for ln in lines)
    assert len(workers) >= 2  # the work was actually shared
    assert "20 trials in" in out and "4 workers" in out


def test_second_run_adds_exactly_its_trials(tmp_path: Path, real_data_dir) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    for _ in range(2):
        assert (
            main([*TINY, "--trials", "3", "--workers", "2", "--study", "w", "--storage", url]) == 0
        )
    study = optuna.load_study(study_name="w", storage=url)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6
    assert len(study.trials) == 6


def test_worker_seeds_differ_across_hosts_not_within_one(monkeypatch) -> None:
    """--seed reproduces a run on one host; hosts with the same index and trial count,
    started at once with the same --seed, still draw different trials."""
    import socket

    from nas.workers import worker_seed

    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-1")
    first = worker_seed(0, 0, 0)
    assert worker_seed(0, 0, 0) == first  # reproducible
    assert len({first, worker_seed(0, 1, 0), worker_seed(0, 0, 5), worker_seed(1, 0, 0)}) == 4
    monkeypatch.setattr(socket, "gethostname", lambda: "gpu-node-2")
    assert worker_seed(0, 0, 0) != first
