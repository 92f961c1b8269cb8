"""Shared fixtures: the real Fashion-MNIST folder, and tiny IDX files for loader tests."""

from __future__ import annotations

import gzip
import struct
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from nas.data.dataset import DEFAULT_DATA_DIR, FILES, resolve_data_dir
from pg_server import (  # noqa: E402, F401 (free_port: for tests)
    free_port,
    pg_bin,
    pgbouncer_bin,
    throwaway_pgbouncer,
    throwaway_postgres,
)

# A small corner of the cifar space: each smoke trial takes about a second on a CPU.
TINY = ["--preset", "cifar", "--growth-rate", "8:12:4", "--convs", "1:2", "--budget", "smoke"]


def overlapped(trials) -> bool:  # noqa: ANN001 - optuna FrozenTrials
    """True if some of these finished trials ran at the same time (--concurrency)."""
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


def argv_with(base: dict[str, str], changes: list[str]) -> list[str]:
    """Command-line options `base` ({"--flag": value}) with `changes` ([flag, value, ...])
    replacing or adding options: one bad input at a time on an otherwise good command."""
    options = dict(base)
    options.update(zip(changes[::2], changes[1::2]))
    return [x for kv in options.items() for x in kv]


def small_config(image_size: int = 28):
    """A DenseNet-BC small enough for CPU unit tests (nas.arch.config.small_densenet)."""
    from nas.arch.config import small_densenet

    return small_densenet(image_size)


def slowed_rounds(monkeypatch, every: int = 2, extra_s: float = 0.005) -> list[list[float]]:
    """Make every `every`-th timing round (the 1st, 3rd, ... by default) noisy on purpose:
    two of each three of its runs 5 ms slower, as if another process took the core.
    Returns the rounds timed so far: each round's times in seconds, as measure saw them."""
    from nas.training import measure

    real = measure.time_runs
    seen: list[list[float]] = []

    def noisy(run):  # noqa: ANN001, ANN202 - the callable time_runs takes
        times = real(run)
        if len(seen) % every == 0:
            times = [t + (extra_s if i % 3 else 0.0) for i, t in enumerate(times)]
        seen.append(times)
        return times

    monkeypatch.setattr(measure, "time_runs", noisy)
    return seen


class EmulatedGraph:
    """A CUDA graph's stand-in on the CPU (nas.training.step.GraphRunner), so that the graphed
    step's
    control flow runs in CPU tests: warmup runs fn; capture records fn and runs nothing,
    returning a static output tensor; replay runs fn and copies its output there. Like
    CUDAGraph.pool(), pool_bytes raises before a capture. `fail`: errors raised by
    successive captures. `events` records the calls in order.

    What it cannot show: that the real capture reads changing values (the LR, the batch
    indices) from static tensors. The CUDA tests and nas.doctor check that on a GPU.
    """

    def __init__(self, fail: list[BaseException] | None = None) -> None:
        self.fail = list(fail or [])
        self.fn = None
        self.out = None
        self.events: list[str] = []

    def warmup(self, fn):  # noqa: ANN001, ANN201
        self.events.append("warmup")
        return fn()

    def capture(self, fn):  # noqa: ANN001, ANN201
        import torch

        self.events.append("capture")
        if self.fail:
            raise self.fail.pop(0)
        self.fn, self.out = fn, torch.full((), float("nan"), dtype=torch.float64)
        return self.out

    def replay(self) -> None:
        self.events.append("replay")
        self.out.copy_(self.fn())

    def pool_bytes(self) -> int:
        if self.fn is None:
            raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
        return 0

    def reset(self) -> None:
        self.events.append("reset")
        self.fn = self.out = None


def add_trained_infeasible_trial(study, name: str):  # noqa: ANN001, ANN201 - optuna types
    """Copy study `name` (in its storage) with a memory budget of 10 MB and one more trial:
    a trained network over that budget (as one over --max-memory-mb is), more accurate and
    cheaper than every other. Returns (the copy, the infeasible trial's number)."""
    import optuna

    from nas.results.front import usable_trials

    storage = study._storage
    optuna.copy_study(
        from_study_name=study.study_name, from_storage=storage, to_storage=storage,
        to_study_name=name,
    )  # fmt: skip
    copy = optuna.load_study(study_name=name, storage=storage)
    copy.set_user_attr("limits", {"memory_mb": 10.0})  # as with --max-memory-mb 10
    model = usable_trials(copy)[0]
    memory = {"value": 15.0, "unit": "MB"}
    copy.add_trial(
        optuna.trial.create_trial(
            values=[1.0, min(t.values[1] for t in copy.trials) / 2],
            params=model.params,
            distributions=model.distributions,
            user_attrs={
                **model.user_attrs,
                "trained": True,
                "over_budget": ["memory"],
                "costs": {**model.user_attrs["costs"], "memory": memory},
            },
            constraints={"memory_mb_over_budget": 5.0},
        )
    )
    return copy, copy.trials[-1].number


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a gzipped IDX file of unsigned bytes (the format's own layout)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_tiny_fashion_mnist(folder: Path, n_train: int = 120, n_test: int = 30) -> Path:
    """Synthetic data in the real file format: for loader and model unit tests only."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 256, (n, 28, 28))
        prefix = "train" if split == "train" else "t10k"
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    return write_tiny_fashion_mnist(tmp_path / "tiny")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real Fashion-MNIST files (Debian's dataset-fashion-mnist, or $NAS_DATA_DIR)."""
    folder = resolve_data_dir()
    if not all((folder / f).is_file() for f in FILES.values()):
        pytest.fail(
            f"real Fashion-MNIST not found in {folder} (default {DEFAULT_DATA_DIR}): "
            "apt-get install dataset-fashion-mnist, or set NAS_DATA_DIR"
        )
    return folder


@pytest.fixture(scope="session")
def real_data(real_data_dir: Path):
    from nas.data.dataset import load_fashion_mnist

    return load_fashion_mnist(real_data_dir)


# -- a throwaway PostgreSQL server (Debian's packages), for the multi-machine storage --------


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway server (benchmarks/pg_server.py) for the session; yields (bin dir, port)."""
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    with throwaway_postgres(max_connections=200) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_password(postgres_server) -> tuple[str, str, str]:
    """A role of the throwaway server that must give a password (scram-sha-256 in
    pg_hba.conf, ahead of the trust line the other tests use), and a database it owns:
    (role, password, database)."""
    import psycopg

    bindir, port = postgres_server
    role, password, db = "nas_pw", f"pw-{uuid.uuid4().hex[:10]}-x", "nas_pw_db"
    with psycopg.connect(
        host="127.0.0.1", port=port, user="nas", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {db} OWNER {role}")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        lines = hba.read_text()
        hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{lines}")
        conn.execute("SELECT pg_reload_conf()")
    return role, password, db


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the throwaway server for each test."""
    import psycopg

    _, port = postgres_server
    name = f"nas_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host="127.0.0.1", port=port, user="nas", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"postgresql://nas@127.0.0.1:{port}/{name}"  # the README's form, as users write it


@pytest.fixture
def pgbouncer_url(postgres_server, postgres_url: str):
    """postgres_url's database through a throwaway PgBouncer (Debian's package) with the
    settings of docs/pgbouncer.ini but 2 server connections, so that the clients'
    transactions take turns on them (what transaction pooling does under load, and what
    server-side prepared statements do not survive); the docs' URL form."""
    if pgbouncer_bin() is None:
        pytest.skip("pgbouncer not installed (apt-get install pgbouncer; .ci/setup --test does)")
    _, server_port = postgres_server
    with throwaway_pgbouncer(server_port, pool_size=2) as port:
        yield f"postgresql://nas@127.0.0.1:{port}/{postgres_url.rsplit('/', 1)[1]}"


# A study in another objective and under a parameter budget: random sampler, seed 1, 6
# trials of a small cifar corner; 3 of them (89k to 101k params) are over 65,000.
COST_STUDY_ARGS = [
    *("--preset", "cifar", "--growth-rate", "8:16:4", "--convs", "1:3", "--budget", "smoke"),
    *("--objectives", "accuracy,latency-cpu", "--max-params", "65000"),
    *("--sampler", "random", "--seed", "1", "--trials", "6", "--device", "cpu"),
]


@pytest.fixture(scope="session")
def cost_study(tmp_path_factory, real_data_dir) -> tuple[str, str]:
    """(storage URL, study name) of a finished `--objectives accuracy,latency-cpu
    --max-params 65000` search on real Fashion-MNIST, run through nas.search.main."""
    from nas.search import main

    url = f"sqlite:///{tmp_path_factory.mktemp('costs')}/c.db"
    assert main([*COST_STUDY_ARGS, "--study", "c", "--storage", url]) == 0
    return url, "c"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.cuda` is the one way a GPU test is named: skipped without a CUDA GPU,
    and selected alone on a lent GPU with `-m cuda` (benchmarks/gpu_all.sh)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cpu_package(tmp_path_factory) -> Path:
    """small_config's AOTInductor CPU package for 28x28 grey images (nas.deploy.artifact),
    compiled once (tens of seconds)."""
    from nas.arch.model import build_model
    from nas.deploy.artifact import compile_package, export_program

    config = small_config()
    program = export_program(build_model(config), config, (28, 28))
    return compile_package(program, tmp_path_factory.mktemp("package") / "net.cpu.pt2")
