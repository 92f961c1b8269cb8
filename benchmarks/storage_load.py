"""How many nas workers one PostgreSQL holds: N client processes against one study.

Each client is a process like a nas worker without the training (no torch): it opens the
storage through nas.study.storage.open_storage (heartbeats on, stale trials retried once, as
`nas.search`), and runs Optuna's optimize loop; each trial sets nas's user attributes,
sleeps --trial-seconds (a short trial) and returns two objective values. Against a local
server with PostgreSQL's default max_connections (100), for each N: trials stored per
second, the per-trial storage overhead (everything but the sleep: ask, attributes, tell,
heartbeat; p50 and p99), the peak of server connections (pg_stat_activity, sampled twice
a second), and errors (clients that died, and what they said). With --kill, 10 % of the
clients are killed (SIGKILL) mid-trial and the rest run on past 3 heartbeats: every
killed trial must end FAIL and be retried once, none left RUNNING, none lost. With
--pgbouncer the clients connect through a throwaway PgBouncer (docs/pgbouncer.ini:
transaction pooling, default_pool_size 40 unless --pool-size) in front of the server.

    python benchmarks/storage_load.py --pool queue --kill --out results/storage-load-queue.json
    python benchmarks/storage_load.py --pool null --kill --out results/storage-load-null.json
    python benchmarks/storage_load.py --pgbouncer --kill --out results/storage-load-pgbouncer.json
    python benchmarks/storage_load.py --pgbouncer --kill --trial-seconds 20 --seconds 120 \
        --jitter 0.5 --out results/storage-load-pgbouncer-20s-jitter.json
    python benchmarks/storage_load.py --clients 4 --seconds 15 --kill   # smoke test
    python benchmarks/storage_load.py --pgbouncer --clients 150 --heartbeat 10 \
        --seconds 120 --out results/storage-burst-pgbouncer.json   # a burst

(run from benchmarks/). The clients start together once all have imported and connected;
a measured window of --seconds follows; clients then finish their trial and exit.
"""

from __future__ import annotations

import argparse
import contextlib
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

from nas.study.patience import DEFAULT_PATIENCE_S
from pg_server import throwaway_pgbouncer, throwaway_postgres

ROOT = Path(__file__).resolve().parents[1]

CLIENT = r"""
import json, random, sys, time
import optuna
from nas.study.storage import finished_elsewhere, open_storage

url, name, trial_seconds, until, heartbeat, jitter, patience = sys.argv[1:8]
trial_seconds, until, heartbeat = float(trial_seconds), float(until), int(heartbeat)
jitter, patience = float(jitter), float(patience)
optuna.logging.set_verbosity(optuna.logging.ERROR)
storage = open_storage(url, heartbeat=heartbeat, patience=patience, say=lambda line: None)
study = optuna.load_study(study_name=name, storage=storage)
spans, last = [], [None]

def objective(trial):
    start = time.perf_counter()
    k = trial.suggest_int("growth_rate", 8, 64, step=4)
    trial.set_user_attr("config", {"growth_rate": k, "convs_per_block": [4, 4, 4]})
    trial.set_user_attr("costs", {"macs": {"value": k * 1.5, "unit": "MMACs (fvcore)"}})
    trial.set_user_attr("trained", True)
    seconds = trial_seconds * random.uniform(1 - jitter, 1 + jitter)
    time.sleep(seconds)
    trial.set_user_attr("train_seconds", seconds)
    inside = time.perf_counter() - start - seconds  # the attributes' writes
    if last[0] is not None:  # and the last trial's tell, this one's ask
        spans.append(inside + start - last[0])
    last[0] = time.perf_counter()
    return 0.5 + k / 1000, k * 1.5


while time.time() < until:
    try:
        study.optimize(objective, n_trials=1)
    except Exception as e:  # as a nas worker: another client failed it as stale meanwhile
        if finished_elsewhere(e) is None:
            raise
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


def run(url: str, port: int, n: int, a: argparse.Namespace, clients_url: str) -> dict[str, Any]:
    """One N: the study is made and read through `url` (the server), the clients use
    `clients_url` (the server, or PgBouncer in front of it)."""
    name = f"load-{n}"
    optuna.create_study(study_name=name, storage=url, directions=["maximize", "minimize"])
    start = time.time() + 5 + 0.4 * n  # every client has imported and connected by then
    until = start + a.seconds
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NAS_DB_POOL": a.pool}
    argv = [sys.executable, "-c", CLIENT, clients_url, name, str(a.trial_seconds), str(until)]
    clients = [
        subprocess.Popen(
            [*argv, str(a.heartbeat), str(a.jitter), str(a.patience)],
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
    time.sleep(max(0.0, start - time.time()))
    cpu = cpu_seconds()
    if a.kill:
        time.sleep(a.seconds / 3)
        for p in clients[: max(1, n // 10)]:
            p.send_signal(signal.SIGKILL)
            killed.append(p.pid)
    time.sleep(max(0.0, until - time.time()))
    cpu = {k: round((v - cpu.get(k, 0.0)) / a.seconds, 2) for k, v in cpu_seconds().items()}
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
        "pgbouncer_pool_size": a.pool_size if a.pgbouncer else None,
        **summary(study, spans, a.seconds),
        "peak_server_connections": peak[0],
        "cpu_cores_busy": cpu,  # CPU seconds per second over the window, by program
        "client_errors": len(errors),
        "errors": sorted(set(errors))[:5],
        "killed": len(killed),
        **(recovery(study) if killed else {}),
    }


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of the live processes of the server (postgres), PgBouncer, the
    clients (python), and the machine in all (/proc/stat, all cores)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"postgres": 0.0, "pgbouncer": 0.0, "python": 0.0}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1]
        key = next((k for k in out if name.startswith(k)), None)
        if key:
            utime, stime = fields.split()[11:13]
            out[key] += (int(utime) + int(stime)) / tick
    busy = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    out["machine"] = (sum(map(int, busy)) - int(busy[3]) - int(busy[4])) / tick  # not idle
    return out


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
    p.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        help="a trial sleeps --trial-seconds x uniform(1 - J, 1 + J), as networks of "
        "different sizes train for different times (default 0: all alike, so that clients "
        "started together ask together)",
    )
    p.add_argument("--kill", action="store_true", help="kill 10%% of clients mid-trial")
    p.add_argument(
        "--patience",
        type=float,
        default=DEFAULT_PATIENCE_S,
        help="seconds each client waits out storage errors (nas.search --storage-patience; "
        f"default {DEFAULT_PATIENCE_S:g}; 0: the first error ends the client, as nas did "
        "before)",
    )
    p.add_argument(
        "--pool",
        choices=("null", "queue"),
        default="queue",
        help="nas's connection handling in the clients (NAS_DB_POOL): queue, SQLAlchemy's "
        "pool of 5 + 10 per process (nas's default); null, a connection per operation",
    )
    p.add_argument(
        "--pgbouncer",
        action="store_true",
        help="clients connect through a throwaway PgBouncer (docs/pgbouncer.ini)",
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=40,
        help="PgBouncer's default_pool_size: server connections at most (default 40, as "
        "docs/pgbouncer.ini)",
    )
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with contextlib.ExitStack() as stack:
        _, port = stack.enter_context(throwaway_postgres())  # its default max_connections
        url = f"postgresql://nas@127.0.0.1:{port}/postgres"
        clients_url, how = url, f"{a.pool} pool"
        if a.pgbouncer:
            bouncer = stack.enter_context(throwaway_pgbouncer(port, a.pool_size))
            clients_url = f"postgresql://nas@127.0.0.1:{bouncer}/postgres"
            how = f"PgBouncer (pool {a.pool_size}), {how}"
        for n in (int(x) for x in a.clients.split(",")):
            time.sleep(10)  # the last N's connections closed
            rows.append(run(url, port, n, a, clients_url))
            r = rows[-1]
            print(
                f"{how}, N={n:>4}: {r['trials_per_second']:>6.2f} trials/s, overhead p50 "
                f"{r['overhead_p50_s']:.3f} s p99 {r['overhead_p99_s']:.3f} s, peak "
                f"{r['peak_server_connections']} connections, {r['client_errors']} clients "
                f"died; CPU cores busy: {r['cpu_cores_busy']}"
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
        meta = {"args": vars(a), "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
        Path(a.out).write_text(json.dumps({"runs": rows, **meta}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
