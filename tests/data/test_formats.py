"""nas.data.formats and nas.data.decode: each layout's bad input is one line, exit 2, nothing
written.

Synthetic arrays here (unit tests of the loaders); real images in tests/data/test_dataset.py.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_idx
from nas.data.dataset import load_data
from nas.errors import DataError
from nas.search import main

RNG = np.random.default_rng(0)
SEARCH = ["--preset", "tiny", "--budget", "smoke", "--trials", "1", "--device", "cpu"]


def images(n: int, side: int = 12, channels: int | None = None) -> np.ndarray:
    shape = (n, side, side) + ((channels,) if channels else ())
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def labels(n: int, classes: int = 3) -> np.ndarray:
    return np.arange(n) % classes


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def image_folder(root: Path, per_class: dict[str, int], side: int = 12) -> Path:
    for name, n in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(images(1, side)[0]).save(root / name / f"{i:03d}.png")
    return root


def _bad_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (the --data path, a piece of the one-line error)."""
    (tmp / "empty").mkdir(parents=True)
    one = image_folder(tmp / "one", {"a": 4})
    no_images = image_folder(tmp / "noimg", {"a": 4})
    (no_images / "b").mkdir()
    (no_images / "b" / "notes.txt").write_text("not an image")
    corrupt = image_folder(tmp / "corrupt", {"a": 4, "b": 4})
    for i in range(3):
        (corrupt / "b" / f"bad{i}.png").write_bytes(b"\x89PNG not really")
    tiny = image_folder(tmp / "tiny", {"a": 3, "b": 3}, side=6)
    objects = tmp / "objects.npz"
    np.savez(objects, x_train=np.array([[1], [2, 3]], dtype=object), y_train=labels(2))
    idx = tmp / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte.gz", images(12))
    write_idx(idx / "train-labels-idx1-ubyte.gz", labels(11))
    stray = image_folder(tmp / "stray" / "train", {"a": 3, "b": 3}).parent
    image_folder(stray / "dog", {"x": 2})
    cifar = tmp / "cifar"
    cifar.mkdir()
    batch = {b"data": images(6, side=8, channels=3).reshape(6, -1), b"labels": list(range(6))}
    for name in ("data_batch_1", "test_batch"):
        (cifar / name).write_bytes(pickle.dumps(batch, protocol=2))
    (cifar / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a", b"b", b"c"]}))
    return {
        "missing path": (tmp / "nowhere", "does not exist"),
        "labels beyond the class names": (cifar, "labels go up to 5, but there are 3 class"),
        "a class folder beside train/": (stray, "has train/ and also dog/: put class folders"),
        "empty folder": (tmp / "empty", "is empty"),
        "one class only": (one, "one class only"),
        "class folder without images": (no_images, "class folder " + str(no_images / "b")),
        "corrupt image": (corrupt, "cannot read image"),
        "images under 8 px": (tiny, "at least 8x8"),
        "labels not integers": (
            npz(tmp / "f.npz", x_train=images(6), y_train=labels(6) + 0.5),
            "non-integer labels",
        ),
        "negative labels": (
            npz(tmp / "n.npz", x_train=images(6), y_train=labels(6) - 1),
            "labels start at 0",
        ),
        "mismatched counts": (
            npz(tmp / "m.npz", x_train=images(6), y_train=labels(5)),
            "5 labels for 6",
        ),
        "float images": (
            npz(tmp / "fl.npz", x_train=images(6) / 255.0, y_train=labels(6)),
            "float64, not uint8",
        ),
        "wrong shape": (
            npz(tmp / "s.npz", x_train=images(6, channels=2), y_train=labels(6)),
            "expected (N, H, W) grey",
        ),
        "objects in npz": (objects, "holds Python objects"),
        "npz without train": (npz(tmp / "t.npz", pixels=images(6)), "has no training images"),
        "IDX counts disagree": (idx, "12 images, 11 labels"),
        "not a data file": (_write(tmp / "notes.txt", "hello"), "not a .npz"),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_each_bad_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys):
    cases = _bad_cases(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    for name, (path, message) in cases.items():
        assert main([*SEARCH, "--data", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert not (tmp_path / "studies").exists(), name
    corrupt = capsys.readouterr()
    assert main([*SEARCH, "--data", str(cases["corrupt image"][0])]) == 2
    corrupt = capsys.readouterr().err
    assert "bad0.png: " in corrupt
    assert "(and 2 other images: bad1.png, bad2.png; per class folder: b 3)" in corrupt


class Hostile:
    """A pickle that runs a shell command when loaded by a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_cifar_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar"
    folder.mkdir()
    batch = {b"data": Hostile(marker), b"labels": [0, 1]}
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=r"refused: the file asks for (posix|os)\.system"):
        load_data(str(folder))
    assert not marker.exists()
    pickle.loads((folder / "test_batch").read_bytes())  # the same bytes, unrestricted: it runs
    assert marker.exists()  # (proof that the file above was really hostile)


def test_cifar_batches_read_as_images_and_labels(tmp_path: Path) -> None:
    """The CHW planes of a CIFAR row become (H, W, C): pixel (r, c) of channel k."""
    x = images(4, side=10, channels=3)
    folder = tmp_path / "cifar"
    folder.mkdir()
    rows = x.transpose(0, 3, 1, 2).reshape(4, -1)
    batch = {b"data": rows, b"labels": [0, 1, 2, 1]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [b"cat", b"dog", b"emu"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    from nas.data.formats import read_cifar

    raw = read_cifar(folder)
    np.testing.assert_array_equal(raw.splits["train"][0], x)
    np.testing.assert_array_equal(raw.splits["test"][1], [0, 1, 2, 1])
    assert raw.classes == ["cat", "dog", "emu"]


def test_folder_cache_is_used_then_rebuilt_when_a_file_changes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "imgs", {"a": 20, "b": 20})
    first = load_data(str(root))
    assert "decoded images read from the cache" not in first.notes
    again = load_data(str(root))
    assert "decoded images read from the cache" in again.notes
    assert again.fingerprint == first.fingerprint
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / "a" / "000.png")
    changed = load_data(str(root))
    assert "decoded images read from the cache" not in changed.notes
    assert changed.fingerprint["content_sha256"] != first.fingerprint["content_sha256"]


def test_mixed_sizes_resized_to_the_most_common_and_said(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    Image.fromarray(images(1, side=20)[0]).save(root / "b" / "big.png")
    d = load_data(str(root))
    assert d.train_x.shape[1:] == (12, 12, 1)
    assert any("1 of 21 images resized to 12x12" in n for n in d.notes)


def test_sixteen_bit_grey_is_scaled_to_eight_bits_not_clipped(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    root = image_folder(tmp_path / "imgs", {"a": 6, "b": 6})
    wide = np.full((12, 12), 65535, dtype=np.uint16)
    wide[0, 0] = 257 * 100
    Image.fromarray(wide).save(root / "a" / "wide.png")  # a 16-bit PNG
    assert Image.open(root / "a" / "wide.png").mode.startswith("I")
    d = load_data(str(root))
    x = np.concatenate([d.train_x.numpy(), d.val_x.numpy()])
    hit = [im for im in x if im[0, 0, 0] == 100 and (im[1:, :, 0] == 255).all()]
    assert len(hit) == 1  # 65535 -> 255 and 25700 -> 100, not clipped to 255 everywhere


def test_gaps_in_labels_are_counted_in_a_note(tmp_path) -> None:
    path = npz(tmp_path / "gap.npz", x_train=images(60), y_train=(np.arange(60) % 2) * 40)
    d = load_data(str(path))
    assert len(d.classes) == 41
    assert any(
        n.startswith("39 of 41 classes have no training images (1, 2, 3, 4, 5, ...)")
        for n in d.notes
    )
