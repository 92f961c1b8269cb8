"""`python -m nas.dashboard`: open a study in optuna-dashboard, with its artifacts.

The same as `optuna-dashboard STORAGE --artifact-dir studies/STUDY-artifacts`, after
checking that the study exists. Objective names come from the study's metric names;
infeasible (over a budget: MACs, parameters, latency, memory) trials carry the constraint
format optuna-dashboard 0.21 reads (see nas.study.objective); `python -m nas.report` stores the
report page and the Pareto trials' architecture JSON as artifacts.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from nas.cli import make_parser, run_cli
from nas.errors import UsageError
from nas.results.artifacts import default_artifact_dir
from nas.study.storage import default_storage_url, load_study, open_storage

__all__ = ["main"]


def _run(argv: list[str] | None) -> int:
    p = make_parser("nas.dashboard", __doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/STUDY.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--artifacts", help="artifact folder (default studies/STUDY-artifacts)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    url = args.storage or default_storage_url(args.study)
    storage = open_storage(url, must_exist=True)
    load_study(storage, args.study)  # a clear error for a study that is not there

    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    try:  # bind once first: a taken port or a foreign host is one line, before any banner
        socket.create_server((args.host, args.port)).close()
    except OSError as e:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {e.strerror or e} (try another --port)"
        ) from None
    folder = Path(args.artifacts) if args.artifacts else default_artifact_dir(args.study)
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"optuna-dashboard for study {args.study!r}: http://{args.host}:{args.port}/", flush=True
    )
    run_server(
        storage,
        host=args.host,
        port=args.port,
        artifact_store=FileSystemArtifactStore(str(folder)),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.dashboard", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
