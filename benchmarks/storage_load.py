"""How many nas workers one PostgreSQL holds: N client processes against one study.

Each client is a process like a nas worker without the training (no torch): it opens the
storage through nas.storage.open_storage (heartbeats on, stale trials retried once, as
`nas.search`), and runs Optuna's optimize loop; each trial sets nas's user attributes,
sleeps --trial-seconds (a short trial) and returns two objective values. Against a local
server with PostgreSQL's default max_connections (100), for each N: trials stored per
second, the per-trial storage overhead (everything but the sleep: ask, attributes, tell,
heartbeat; p50 and p99), the peak of server connections (pg_stat_activity, sampled twice
a second), and errors (clients that died, and what they said). With --kill, 10 % of the
clients are killed (SIGKILL) mid-trial and the rest run on past 3 heartbeats: every
killed trial must end FAIL and be retried once, none left RUNNING, none lost.

    python benchmarks/storage_load.py --pool queue --kill --out results/storage-load-queue.json
    python benchmarks/storage_load.py --pool null --kill --out results/storage-load-null.json
    python benchmarks/storage_load.py --clients 4 --seconds 15 --kill   # smoke test

(run from benchmarks/). The clients start together once all have imported and connected;
a measured window of --seconds follows; clients then finish their trial and exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import psycopg

from pg_server import throwaway_postgres

ROOT = Path(__file__).resolve().parents[1]

CLIENT = r"""
import json, sys, time
import optuna
from nas.storage import open_storage

url, name, trial_seconds, until, heartbeat = sys.argv[1:6]
trial_seconds, until, heartbeat = float(trial_seconds), float(until), int(heartbeat)
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=heartbeat))
spans, last = [], [None]

def objective(trial):
    start = time.perf_counter()
    k = trial.suggest_int("growth_rate", 8, 64, step=4)
    trial.set_user_attr("config", {"growth_rate": k, "convs_per_block": [4, 4, 4]})
    trial.set_user_attr("costs", {"macs": {"value": k * 1.5, "unit": "MMACs (fvcore)"}})
    trial.set_user_attr("trained", True)
    time.sleep(trial_seconds)
    trial.set_user_attr("train_seconds", trial_seconds)
    inside = time.perf_counter() - start - trial_seconds  # the attributes' writes
    if last[0] is not None:  # and the last trial's tell, this one's ask
        spans.append(inside + start - last[0])
    last[0] = time.perf_counter()
    return 0.5 + k / 1000, k * 1.5


while time.time() < until:
    study.optimize(objective, n_trials=1)
print(json.dumps({"spans": spans}), flush=True)
"""


def connections(port: int, stop: threading.Event, peak: list[int]) -> None:
    """Sample the server's client connections twice a second; keep the peak."""
    with psycopg.connect(host="127.0.0.1", port=port, user="nas", dbname="postgres") as conn:
        conn.autocommit = True
        while not stop.wait(0.5):
            n = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()[0]
            peak[0] = max(peak[0], n - 1)  # not this sampler's own


def run(url: str, port: int, n: int, a: argparse.Namespace) -> dict[str, Any]:
    name = f"load-{n}"
    optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    start = time.time() + 5 + 0.4 * n  # every client has imported and connected by then
    until = start + a.seconds
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_DB_POOL": a.pool}
    argv = [sys.executable, "-c", CLIENT, url, name, str(a.trial_seconds), str(until)]
    clients = [
        subprocess.Popen(
            [*argv, str(a.heartbeat)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    peak, stop = [0], threading.Event()
    sampler = threading.Thread(target=connections, args=(port, stop, peak), daemon=True)
    sampler.start()
    killed: list[int] = []
    if a.kill:
        time.sleep(max(0.0, start - time.time()) + a.seconds / 3)
        for p in clients[: max(1, n // 10)]:
            p.send_signal(signal.SIGKILL)
            killed.append(p.pid)
    outs = [p.communicate(timeout=until - time.time() + 600) for p in clients]
    stop.set()
    sampler.join()
    spans, errors = [], []
    for p, (out, err) in zip(clients, outs):
        if p.pid in killed:
            continue
        if p.returncode != 0:
            errors.append((err.strip().splitlines() or ["?"])[-1][:300])
        elif out.strip():
            spans += json.loads(out.strip().splitlines()[-1])["spans"]
    study = optuna.load_study(study_name=name, storage=url)
    return {
        "clients": n,
        "pool": a.pool,
        **summary(study, spans, a.seconds),
        "peak_server_connections": peak[0],
        "client_errors": len(errors),
        "errors": sorted(set(errors))[:5],
        "killed": len(killed),
        **(recovery(study) if killed else {}),
    }


def summary(study: optuna.Study, spans: list[float], seconds: float) -> dict[str, Any]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = states.count(optuna.trial.TrialState.COMPLETE)
    q = statistics.quantiles(spans, n=100) if len(spans) >= 2 else [float("nan")] * 99
    return {
        "trials_complete": done,
        "trials_per_second": round(done / seconds, 2),
        "overhead_p50_s": round(q[49], 4),
        "overhead_p99_s": round(q[98], 4),
    }


def recovery(study: optuna.Study) -> dict[str, Any]:
    """After a kill: every failed trial retried exactly once, nothing left RUNNING."""
    trials = study.get_trials(deepcopy=False)
    failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL]
    retries: dict[int, int] = {}
    for t in trials:
        if "failed_trial" in t.system_attrs:
            n = t.system_attrs["failed_trial"]
            retries[n] = retries.get(n, 0) + 1
    return {
        "failed_by_heartbeat": len(failed),
        "retried_once": sum(retries.get(n) == 1 for n in failed),
        "left_running": sum(t.state == optuna.trial.TrialState.RUNNING for t in trials),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="25,50,100,150", help="N values, comma-separated")
    p.add_argument("--seconds", type=float, default=60, help="measured window per N")
    p.add_argument("--trial-seconds", type=float, default=2.0, help="sleep per trial")
    p.add_argument("--heartbeat", type=int, default=2, help="seconds between heartbeats")
    p.add_argument("--kill", action="store_true", help="kill 10%% of clients mid-trial")
    p.add_argument(
        "--pool",
        choices=("null", "queue"),
        default="null",
        help="nas's connection handling in the clients (NAS_DB_POOL): null, a connection "
        "per operation (nas's default); queue, SQLAlchemy's pool of 5 + 10 per process",
    )
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    rows = []
    with throwaway_postgres() as (_, port):  # PostgreSQL's default max_connections
        url = f"postgresql://nas@127.0.0.1:{port}/postgres"
        for n in (int(x) for x in a.clients.split(",")):
            time.sleep(10)  # the last N's connections closed
            rows.append(run(url, port, n, a))
            r = rows[-1]
            print(
                f"{a.pool} pool, N={n:>4}: {r['trials_per_second']:>6.2f} trials/s, overhead p50 "
                f"{r['overhead_p50_s']:.3f} s p99 {r['overhead_p99_s']:.3f} s, peak "
                f"{r['peak_server_connections']} connections, {r['client_errors']} clients "
                f"died"
                + (f" ({r['errors'][0]})" if r["errors"] else "")
                + (
                    f"; killed {r['killed']}: {r['failed_by_heartbeat']} failed by heartbeat, "
                    f"{r['retried_once']} retried once, {r['left_running']} left running"
                    if r["killed"]
                    else ""
                ),
                flush=True,
            )
    if a.out:
        Path(a.out).write_text(json.dumps({"runs": rows, "args": vars(a)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
