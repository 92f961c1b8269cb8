"""Shared fixtures: the real Fashion-MNIST folder, and tiny IDX files for loader tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from nas.data import DEFAULT_DATA_DIR, FILES, resolve_data_dir


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
    from nas.data import load_fashion_mnist

    return load_fashion_mnist(real_data_dir)
