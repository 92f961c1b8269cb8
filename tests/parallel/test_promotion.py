"""nas.parallel.promotion: which run goes up a rung of a halving search, once, across
workers and hosts, on real studies (SQLite and the throwaway PostgreSQL)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import optuna
import pytest
from test_faults import SLOW, start, wait_until_stale

from conftest import TINY
from nas.dashboard import study_note
from nas.export import main as export
from nas.parallel.promotion import promote, to_promote
from nas.results.front import dominates, pareto_front
from nas.results.table import LOWER_RUNG, trials_frame
from nas.search import main
from nas.study.record import TrialRecord, trial_attrs
from nas.study.rungs import Halving

STATE = optuna.trial.TrialState
HALVING = ["--halving", "2", "--rungs", "2"]  # smoke: rung 0 on 256 images, rung 1 on 512


def run(number: int, accuracy: float, mmacs: float, rung: int) -> optuna.trial.FrozenTrial:
    """A complete, trained run as a study stores it."""
    t = optuna.trial.create_trial(
        values=[accuracy, mmacs],
        params={"growth_rate": number},
        distributions={"growth_rate": optuna.distributions.IntDistribution(0, 100)},
        user_attrs=trial_attrs(rung=rung, trained=True),
    )
    t.number = number
    return t


def test_a_rung_promotes_its_non_dominated_runs_top_rung_first() -> None:
    """Rung 0 of six runs, ETA 2: three go up, all from its first front (E, A, B, F; C and
    D dominated), the most spread out of the four: its two ends and one of the middle;
    then none. A rung above with ETA runs promotes first."""
    h = Halving(2, 3)
    rung0 = [
        run(0, 0.80, 10, 0),  # A
        run(1, 0.70, 5, 0),  # B
        run(2, 0.60, 20, 0),  # C: A beats it
        run(3, 0.50, 30, 0),  # D
        run(4, 0.85, 40, 0),  # E
        run(5, 0.40, 2, 0),  # F
    ]
    promoted: set[int] = set()
    while (t := to_promote(rung0, h, promoted)) is not None:
        assert not any(dominates(tuple(o.values), tuple(t.values)) for o in rung0), t.number
        promoted.add(t.number)
    assert len(promoted) == 3 and {4, 5} <= promoted and promoted & {0, 1}
    rung1 = [run(6, 0.9, 10, 1), run(7, 0.95, 40, 1)]
    t = to_promote(rung0 + rung1, h, set())
    assert t is not None and t.number in (6, 7)  # rung 1 before rung 0
    assert to_promote(rung0 + rung1, h, promoted | {6, 7}) is None


def check_halving_study(study: optuna.Study, h: Halving) -> None:
    """What a halving study must hold, whatever the workers did: nothing left running or
    waiting; every promotion of a trained run one rung below, trained once (another queued
    at the same moment pruned untrained); each run's rung accuracies its source's and its
    own; the front the top rung's. (As in ASHA, a rung may promote more than 1/ETA of its
    runs in all: a run promoted while among its best may later fall out of them.)"""
    trials = study.get_trials()
    assert not [t for t in trials if t.state in (STATE.RUNNING, STATE.WAITING)]
    records = {t.number: TrialRecord.of(t) for t in trials}
    trained = {n: r for n, r in records.items() if r.trained and trials[n].state == STATE.COMPLETE}
    sources = {r.promoted_from for r in records.values()} - {None}
    for source in sources:
        runs = [n for n, r in trained.items() if r.promoted_from == source]
        assert len(runs) == 1, (source, runs)
        up, below = trained[runs[0]], trained[source]
        assert up.rung == below.rung + 1 and up.config == below.config
        assert list(up.rung_accuracies) == [*below.rung_accuracies, trials[runs[0]].values[0]]
    for n in sources:
        twins = [t for t in trials if TrialRecord.of(t).promoted_from == n]
        extra = [t for t in twins if t.state == STATE.PRUNED]
        assert all(TrialRecord.of(t).duplicate_of is not None for t in extra)
    front = pareto_front(study)
    assert front and all(records[t.number].rung == h.top for t in front)
    # a lower rung is not infeasible: the samplers learn from every run (no limits here)
    assert not any(t.constraints for t in trials)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_workers_halve_and_promote_each_network_once(
    backend: str, request, tmp_path: Path, real_data_dir, capsys
) -> None:
    if backend == "postgres":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path}/h.db"
    argv = [*TINY, *HALVING, "--trials", "12", "--workers", "2", "--study", "h"]
    assert main([*argv, "--storage", url, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "halving 2: 2 rungs of 256, 512 train images" in out
    study = optuna.load_study(study_name="h", storage=url)
    check_halving_study(study, Halving(2, 2))
    assert "halving 2: networks trained per rung in the study: rung 0 " in out, out
    # the report shows the lower rung as such, the export carries the rung
    frame = trials_frame(study)
    lower = frame[frame["status"] == LOWER_RUNG]
    assert len(lower) and (lower["rung"] == 0).all() and lower["val_accuracy"].isna().all()
    dest = tmp_path / "pick.json"
    assert export(["--study", "h", "--storage", url, "--out", str(dest)]) == 0
    picked = json.loads(dest.read_text())
    assert picked["rung"] == 1 and len(picked["rung_accuracies"]) == 2
    assert picked["halving"] == {"eta": 2, "rungs": 2}
    # the dashboard's own front takes every run: its note says so
    note = study_note(study)
    assert note is not None and "**This search halves**" in note and "rung 1: " in note


def test_a_promotion_queued_by_two_workers_at_once_is_trained_once(
    tmp_path: Path, real_data_dir
) -> None:
    """Two workers that look at the same moment both queue the same promotion: the earlier
    trial trains it, the later one is pruned at its start, untrained."""
    url = f"sqlite:///{tmp_path}/twice.db"
    argv = [*TINY, *HALVING, "--study", "t", "--storage", url, "--device", "cpu"]
    assert main([*argv, "--trials", "2", "--sampler", "random", "--seed", "1"]) == 0
    study = optuna.load_study(study_name="t", storage=url)
    low = max(study.trials, key=lambda t: t.values[0])
    r = TrialRecord.of(low)
    assert r.rung == 0
    attrs = trial_attrs(rung=1, promoted_from=low.number, rung_accuracies=r.rung_accuracies)
    for _ in range(2):  # as two workers would, each before the other's is stored
        study.enqueue_trial(low.params, user_attrs=attrs)
    assert main([*argv, "--trials", "2"]) == 0
    first, second = study.get_trials()[2:4]
    assert first.state == STATE.COMPLETE and TrialRecord.of(first).trained
    assert second.state == STATE.PRUNED and TrialRecord.of(second).duplicate_of == first.number
    assert not TrialRecord.of(second).trained
    # sampled before it was pruned: a trial without parameters would empty multivariate
    # TPE's search space (the intersection of all trials', pruned ones included) for good
    assert second.params == first.params


def test_an_interrupted_promotion_is_queued_again() -> None:
    """Ctrl-C or a SLURM time limit fails a promotion as interrupted, and the heartbeat
    does not retry such a trial: the next promote() queues it again. One that failed for a
    reason of its own (out of memory) is not."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    h = Halving(2, 2)
    for t in (run(0, 0.8, 10, 0), run(1, 0.7, 20, 0)):
        study.add_trial(t)
    assert promote(study, h) == 0
    for reason in ("interrupted (SIGTERM)", "out of memory: CUDA"):
        queued = study.ask()  # the promotion, as a worker takes it
        assert queued.user_attrs["promoted_from"] == 0 and queued.user_attrs["rung"] == 1
        study._storage.set_trial_user_attr(queued._trial_id, "fail_reason", reason)
        study.tell(queued, state=STATE.FAIL)
        if reason.startswith("interrupted"):
            assert promote(study, h) == 0  # queued again
    assert promote(study, h) is None  # tried, and failed for a reason of its own


def test_a_continued_study_keeps_its_halving(tmp_path: Path, real_data_dir, capsys) -> None:
    url = f"sqlite:///{tmp_path}/keep.db"
    base = ["--study", "keep", "--storage", url, "--device", "cpu"]
    assert main([*TINY, *HALVING, *base, "--trials", "1"]) == 0
    assert main([*base, "--trials", "1"]) == 0  # its own halving, unasked
    study = optuna.load_study(study_name="keep", storage=url)
    assert [TrialRecord.of(t).rung for t in study.trials] == [0, 0]
    capsys.readouterr()
    assert main([*base, "--trials", "1", "--halving", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "halves with --halving 2 --rungs 2, not --halving 3" in err


def test_a_killed_workers_promotion_is_retried_once(tmp_path: Path, real_data_dir) -> None:
    """kill -9 while a promotion trains: the heartbeat fails it, its retry trains the
    network up the rung, and no worker queues the promotion again."""
    url = f"sqlite:///{tmp_path}/k.db"
    args = [*SLOW, *HALVING, "--study", "k", "--storage", url, "--heartbeat", "1"]
    victim = start([*args, "--trials", "6", "--sampler", "random", "--seed", "3"])
    deadline = time.monotonic() + 240
    while True:  # until a promotion trains
        assert time.monotonic() < deadline and victim.poll() is None, "no promotion trained"
        try:
            running = optuna.load_study(study_name="k", storage=url).get_trials(
                states=(STATE.RUNNING,)
            )
        except KeyError:
            running = []
        up = [
            t
            for t in running
            if "promoted_from" in t.user_attrs and "fvcore_seconds" in t.user_attrs
        ]
        if up:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed = up[0]
    wait_until_stale(url, "k", [killed._trial_id])
    rescuer = start([*args, "--trials", "2"])
    out = rescuer.communicate(timeout=300)[0]
    assert rescuer.returncode == 0, out
    trials = optuna.load_study(study_name="k", storage=url).get_trials()
    source = killed.user_attrs["promoted_from"]
    assert trials[killed.number].state == STATE.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == STATE.COMPLETE
    ups = [t for t in trials if TrialRecord.of(t).promoted_from == source]
    assert [t.number for t in ups if TrialRecord.of(t).trained] == [retries[0].number]
    assert {t.number for t in ups} == {killed.number, retries[0].number}
