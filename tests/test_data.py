"""nas.data: the IDX reader, its errors, the fixed split, and real Fashion-MNIST."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_idx
from nas.data import (
    DataError,
    load_fashion_mnist,
    read_idx,
    resolve_data_dir,
    to_input,
)


def test_read_idx_round_trip(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", 3), a)


def test_tiny_files_split(tiny_data_dir: Path) -> None:
    d = load_fashion_mnist(tiny_data_dir)
    assert d.train_x.shape == (100, 28, 28) and d.val_x.shape == (20, 28, 28)
    assert d.test_x.shape == (30, 28, 28) and d.train_x.dtype == torch.uint8
    assert d.train_y.dtype == torch.int64
    x, y = d.full_train()
    assert len(x) == len(y) == 120


def test_split_is_fixed_and_disjoint(tiny_data_dir: Path) -> None:
    a, b = load_fashion_mnist(tiny_data_dir), load_fashion_mnist(tiny_data_dir)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    rows = {bytes(r.numpy()) for r in a.train_x}
    assert not rows & {bytes(r.numpy()) for r in a.val_x}


def _corrupt(folder: Path, how: str) -> Path:
    f = folder / "train-images-idx3-ubyte.gz"
    if how == "missing":
        f.unlink()
    elif how == "not gzip":
        f.write_bytes(b"this is not gzip data")
    elif how == "truncated":
        raw = gzip.decompress(f.read_bytes())
        f.write_bytes(gzip.compress(raw[:-100]))
    elif how == "bad magic":
        raw = bytearray(gzip.decompress(f.read_bytes()))
        raw[2] = 0x0D  # float32 instead of unsigned bytes
        f.write_bytes(gzip.compress(bytes(raw)))
    elif how == "labels disagree":
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    return f


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", "missing Fashion-MNIST file"),
        ("not gzip", "corrupt Fashion-MNIST file"),
        ("truncated", "header says"),
        ("bad magic", "bad IDX header"),
        ("labels disagree", "files disagree"),
    ],
)
def test_bad_files_give_one_clear_error(tiny_data_dir: Path, how: str, message: str) -> None:
    _corrupt(tiny_data_dir, how)
    with pytest.raises(DataError, match=message) as e:
        load_fashion_mnist(tiny_data_dir)
    if how != "labels disagree":
        assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NAS_DATA_DIR", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir("/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("NAS_DATA_DIR")
    assert resolve_data_dir() == Path("/usr/share/datasets/fashion-mnist")


def test_to_input_scales_and_resizes() -> None:
    x = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    y = to_input(x, 96, torch.float32)
    assert y.shape == (2, 1, 96, 96)
    torch.testing.assert_close(y, torch.ones_like(y))
    assert to_input(x, 28, torch.float32).shape == (2, 1, 28, 28)


def test_real_fashion_mnist(real_data) -> None:
    d = real_data
    assert (len(d.train_x), len(d.val_x), len(d.test_x)) == (50_000, 10_000, 10_000)
    # Fashion-MNIST is balanced: 6000 of each class in train+val, 1000 in test
    _, y = d.full_train()
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(d.test_y).tolist() == [1000] * 10
    # mean pixel of Fashion-MNIST's training set is 72.94 / 255 = 0.286
    assert abs(d.train_x.float().mean().item() / 255 - 0.286) < 0.003


def test_split_permutation_is_pinned_by_arithmetic() -> None:
    """The same indices on every host and library version: pinned values, a true
    permutation, and another seed gives another order."""
    from nas.data import split_permutation

    p = split_permutation(60_000, 0)
    assert sorted(p.tolist()) == list(range(60_000))
    assert p[:5].tolist() == [34952, 30320, 10062, 9539, 25727]
    assert split_permutation(60_000, 1)[:5].tolist() != p[:5].tolist()


def test_fingerprint_names_files_and_split(real_data, tiny_data_dir, monkeypatch) -> None:
    import nas.data

    fp = real_data.fingerprint
    assert (fp["train"], fp["val"], fp["test"]) == (50_000, 10_000, 10_000)
    tiny = load_fashion_mnist(tiny_data_dir).fingerprint
    assert tiny["files_sha256"] != fp["files_sha256"]
    monkeypatch.setattr(nas.data, "SPLIT_SEED", 1)
    other = load_fashion_mnist(tiny_data_dir).fingerprint
    assert other["files_sha256"] == tiny["files_sha256"]
    assert other["val_indices_sha256"] != tiny["val_indices_sha256"]
