"""Workers through a database's bad minute: real nas.search workers while the database, or
the pooler in front of it, goes away and comes back.

Four `nas.search` processes (as four hosts, `--workers 1` each) share one study on a
throwaway PostgreSQL (Debian's packages, benchmarks/pg_server.py), training the `tiny`
preset at the `smoke` budget on real Fashion-MNIST with the default heartbeat (10 s: a
silent trial is stale after 30 s) and patience (300 s). Once the first trial has
finished and a few more seconds have passed, one of:

  restart-5    the server stopped as for maintenance (pg_ctl stop -m fast: every session
               terminated) and started again 5 s later
  restart-60   the same, down 60 s: twice the heartbeat's 30 s grace
  pgbouncer    the workers connect through a throwaway PgBouncer (docs/pgbouncer.ini),
               which is stopped (SIGTERM: every connection closed) and started again 5 s
               later on the same port

For each: every worker's exit status, whether it said the database was unreachable and
back, the study's trials by state, trials failed as stale and retried (a trial run twice),
and the wall time. Success: every worker exits 0, every trial COMPLETE, none retried.

    python benchmarks/outage.py --out benchmarks/results/outage.json
    python benchmarks/outage.py --scenarios restart-5 --trials 3   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pg_server import (  # noqa: E402 - beside this file
    restart_pgbouncer,
    start_postgres,
    stop_postgres,
    throwaway_pgbouncer,
    throwaway_postgres,
)

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"restart-5": 5.0, "restart-60": 60.0, "pgbouncer": 5.0}
SEARCH = ["--preset", "tiny", "--budget", "smoke", "--device", "cpu", "--sampler", "random"]


def first_trial_done(url: str, study: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError, sqlalchemy.exc.SQLAlchemyError):
            s = optuna.load_study(study_name=study, storage=url)
            if any(t.state.is_finished() for t in s.get_trials(deepcopy=False)):
                return
        time.sleep(0.5)
    raise RuntimeError("no trial finished")


def scenario(name: str, a: argparse.Namespace) -> dict[str, Any]:
    down = SCENARIOS[name]
    with contextlib.ExitStack() as stack:
        _, port = stack.enter_context(throwaway_postgres())
        url = f"postgresql://nas@127.0.0.1:{port}/postgres"
        workers_url = url
        if name == "pgbouncer":
            bouncer = stack.enter_context(throwaway_pgbouncer(port))
            workers_url = f"postgresql://nas@127.0.0.1:{bouncer}/postgres"
        argv = [*SEARCH, "--study", name, "--storage", workers_url, "--trials", str(a.trials)]
        t0 = time.monotonic()
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "nas.search", *argv, "--seed", str(i)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(a.workers)
        ]
        first_trial_done(url, name)
        time.sleep(a.after)
        went = time.monotonic() - t0
        if name == "pgbouncer":
            restart_pgbouncer(bouncer, down)
        else:
            stop_postgres(port)
            time.sleep(down)
            start_postgres(port)
        outs = [w.communicate(timeout=1800) for w in workers]
        wall = time.monotonic() - t0
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {
        "scenario": name,
        "down_s": down,
        "went_down_at_s": round(went, 1),
        "wall_s": round(wall, 1),
        "exit_codes": [w.returncode for w in workers],
        "said_unreachable": sum("is unreachable (" in err for _, err in outs),
        "said_back": sum("is back after" in err for _, err in outs),
        "trials": len(trials),
        "states": states,
        "retried": sum("failed_trial" in t.system_attrs for t in trials),
        "errors": [
            err.strip().splitlines()[-1][:300]
            for (_, err), w in zip(outs, workers)
            if w.returncode
        ],  # fmt: skip
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    p.add_argument("--workers", type=int, default=4, help="nas.search processes (default 4)")
    p.add_argument("--trials", type=int, default=6, help="trials per worker (default 6)")
    p.add_argument("--after", type=float, default=5, help="seconds after the first trial")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for name in a.scenarios.split(","):
        r = scenario(name, a)
        rows.append(r)
        print(
            f"{name}: down {r['down_s']:g} s at {r['went_down_at_s']} s; exit codes "
            f"{r['exit_codes']}; {r['said_unreachable']} said unreachable, {r['said_back']} "
            f"back; trials {r['states']}, {r['retried']} retried; {r['wall_s']} s"
            + (f"; {r['errors'][0]}" if r["errors"] else ""),
            flush=True,
        )
    if a.out:
        meta = {"args": vars(a), "date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count()}
        Path(a.out).write_text(json.dumps({"runs": rows, **meta}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
