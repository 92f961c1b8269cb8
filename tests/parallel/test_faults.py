"""Faults that must cost one trial, never the study: kill -9, Ctrl-C, out of memory, NaN,
with one trial at a time and with two at once (--concurrency 2).

Each runs real `nas.search` processes on real Fashion-MNIST and SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from conftest import TINY, overlapped
from nas.search import main
from nas.study.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
# d2l-preset trials take a few seconds on a CPU: long enough to be caught mid-trial.
SLOW = ["--growth-rate", "16:24:8", "--convs", "2:3", "--budget", "smoke"]
STATE = optuna.trial.TrialState


def _sigint_as_in_a_terminal() -> None:
    """In the child before exec: SIGINT neither ignored nor blocked, whatever the runner had.

    A shell's background job (`cmd &`, as CI runners may start the tests) inherits SIGINT
    ignored, and a Python started so ignores Ctrl-C for good.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start(args: list[str], wrapper: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "nas.search"] if wrapper is None else [sys.executable, wrapper]
    return subprocess.Popen(
        [*cmd, *args],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )


def wait_for_running_trials(
    url: str, name: str, n: int = 1, timeout: float = 120
) -> list[optuna.trial.FrozenTrial]:
    """The first moment n trials are RUNNING at once, past sampling and counting
    (training): those trials."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=url)
            running = [
                t
                for t in study.get_trials(states=(STATE.RUNNING,))
                if "fvcore_seconds" in t.user_attrs
            ]
            if len(running) >= n:
                return running
        except KeyError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{n} trials did not reach training together in time")


def wait_until_stale(url: str, name: str, trial_ids: list[int], timeout: float = 60) -> None:
    """Until the storage counts these trials stale (3 heartbeats of silence: whole seconds
    in SQLite), as the next worker to start a trial will find them."""
    storage = open_storage(url, heartbeat=1)
    study_id = storage.get_study_id_from_name(name)
    deadline = time.monotonic() + timeout
    while not set(trial_ids) <= set(storage._get_stale_trial_ids(study_id)):
        assert time.monotonic() < deadline, "the killed trials never went stale"
        time.sleep(0.2)


def wait_for_running_trial(url: str, name: str) -> optuna.trial.FrozenTrial:
    return wait_for_running_trials(url, name)[0]


def test_sigkill_with_two_trials_running_fails_both_by_heartbeat_and_retries_each(
    tmp_path: Path, real_data_dir
) -> None:
    url = f"sqlite:///{tmp_path}/k.db"
    args = [*SLOW, "--study", "k", "--storage", url, "--heartbeat", "1", "--concurrency", "2"]
    victim = start([*args, "--trials", "4"])
    wait_for_running_trials(url, "k", 2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    before = {t.number: t for t in optuna.load_study(study_name="k", storage=url).trials}
    # the trials killed mid-run (the two seen, or later ones if a slow poll let them end)
    running = [t for t in before.values() if t.state == STATE.RUNNING]  # nobody noticed
    assert 1 <= len(running) <= 2

    wait_until_stale(url, "k", [t._trial_id for t in running])
    rescuer = start([*args, "--trials", str(len(running))])
    out = rescuer.communicate(timeout=300)[0]
    assert rescuer.returncode == 0, out

    trials = optuna.load_study(study_name="k", storage=url).trials
    for r in running:
        killed = trials[r.number]
        assert killed.state == STATE.FAIL
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == r.number]
        assert len(retries) == 1
        assert retries[0].state == STATE.COMPLETE and retries[0].params == killed.params
    for n, t in before.items():  # every trial finished before the kill is intact
        if t.state == STATE.COMPLETE:
            assert trials[n].state == STATE.COMPLETE and trials[n].values == t.values
    assert not [t for t in trials if t.state == STATE.RUNNING]
    assert len(trials) == len(before) + len(running)  # the rescuer's trials: the retries


def test_sigint_with_two_trials_running_fails_both_exits_130_and_resumes(
    tmp_path: Path, real_data_dir
) -> None:
    """Ctrl-C reaches the main thread only; both trials running in their threads are
    failed with the reason, none is left RUNNING, and the same command resumes."""
    url = f"sqlite:///{tmp_path}/i.db"
    args = [*SLOW, "--study", "i", "--storage", url, "--trials", "4", "--concurrency", "2"]
    proc = start(args)
    wait_for_running_trials(url, "i", 2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "nas.search: interrupted (Ctrl-C)" in out and "Traceback" not in out
    trials = optuna.load_study(study_name="i", storage=url).trials
    assert not [t for t in trials if t.state == STATE.RUNNING]
    failed = [t for t in trials if t.state == STATE.FAIL]
    # both were training when the signal came; one may have finished its last step first
    assert 1 <= len(failed) <= 2
    assert all(t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" for t in failed)
    assert len(trials) <= 4 and all(t.state == STATE.COMPLETE for t in trials if t not in failed)

    done = len(trials) - len(failed)
    again = start([*args, "--trials", "2"])  # the last --trials wins
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    trials = optuna.load_study(study_name="i", storage=url).trials
    assert len([t for t in trials if t.state == STATE.COMPLETE]) == done + 2
    assert not [t for t in trials if t.state == STATE.RUNNING]


OOM_WRAPPER = """
import resource, sys
from nas.data.dataset import load_fashion_mnist
from nas.search import main
load_fashion_mnist()  # imports and page cache first, then cap the address space
status = open("/proc/self/status").read().split("VmSize:")[1]
limit = int(status.split()[0]) * 1024 + 1500 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[1:]))
"""


def test_out_of_memory_fails_one_trial_and_the_trial_beside_it_goes_on(
    tmp_path: Path, real_data_dir
) -> None:
    wrapper = tmp_path / "capped.py"
    wrapper.write_text(OOM_WRAPPER)
    url = f"sqlite:///{tmp_path}/m.db"
    # k=512 needs far more than 1.5 GB at batch 32; k=8 needs little.
    args = [
        "--preset",
        "cifar",
        "--growth-rate",
        "8:512:504",
        "--convs",
        "1:1",
        "--budget",
        "smoke",
        "--sampler",
        "random",
        "--seed",
        "1",
        "--trials",
        "4",
        "--concurrency",
        "2",
        "--study",
        "m",
        "--storage",
        url,
    ]
    proc = start(args, wrapper=str(wrapper))
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    trials = optuna.load_study(study_name="m", storage=url).trials
    assert len(trials) == 4
    big = [t for t in trials if t.params["growth_rate"] == 512]
    small = [t for t in trials if t.params["growth_rate"] == 8]
    assert big and small
    for t in big:
        assert t.state == STATE.FAIL
        assert t.user_attrs["fail_reason"].startswith("out of memory: DefaultCPUAllocator")
    assert all(t.state == STATE.COMPLETE for t in small)
    assert f"({len(big)} failed, 0 repeating a trained network, 1 worker x 2 at once)" in out
    assert overlapped(big + small)  # a small one trained while a big one ran out
    assert "fail: out of memory" in out


def test_nan_loss_fails_each_trial_with_its_reason(tmp_path: Path, real_data_dir, capsys) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    argv = [*TINY, "--trials", "2", "--lr", "10000", "--study", "n", "--storage", url]
    assert main(argv) == 0
    trials = optuna.load_study(study_name="n", storage=url).trials
    assert [t.state for t in trials] == [STATE.FAIL, STATE.FAIL]
    for t in trials:
        assert t.user_attrs["fail_reason"].startswith("diverged: training loss became nan")
    out = capsys.readouterr().out
    assert "(2 failed, 0 repeating a trained network, 1 worker x 1 at once)" in out
    assert "fail: diverged" in out


def test_sigterm_fails_the_trial_and_the_reference_is_trained_next_run(
    tmp_path: Path, real_data_dir
) -> None:
    """`timeout`, `kill`, SLURM and `docker stop` send SIGTERM: the running trial (here the
    d2l reference, trial 0) is failed with its reason, nothing stays RUNNING, exit 143;
    the next run trains the reference again rather than leaving the study without it."""
    url = f"sqlite:///{tmp_path}/t.db"
    args = ["--growth-rate", "8:32:8", "--convs", "1:4", "--budget", "smoke"]
    args += ["--study", "t", "--storage", url]
    proc = start([*args, "--trials", "2"])
    running = wait_for_running_trial(url, "t")
    assert running.number == 0 and running.user_attrs["reference"] == "d2l chapter"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, out
    assert "nas.search: interrupted (SIGTERM)" in out and "Traceback" not in out
    [trial] = optuna.load_study(study_name="t", storage=url).trials
    assert trial.state == STATE.FAIL and trial.user_attrs["fail_reason"] == "interrupted (SIGTERM)"

    again = start([*args, "--trials", "1"])  # at once: no stale RUNNING trial in the way
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    trials = optuna.load_study(study_name="t", storage=url).trials
    assert len(trials) == 2 and trials[1].state == STATE.COMPLETE
    assert trials[1].user_attrs["reference"] == "d2l chapter"
    assert trials[1].params == trial.params
