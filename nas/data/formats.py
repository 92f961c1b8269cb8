"""Readers of the image layouts nas takes, each to uint8 arrays (N, H, W, C) and labels.

One function per layout, detected by `detect` from what is on disk:
  idx     a folder of MNIST-style IDX files (train-images-idx3-ubyte[.gz], t10k-..., or
          EMNIST's emnist-NAME-train-images-...): any size, any number of classes;
  npz     a .npz of train_images/train_labels (+ val_*, test_*), MedMNIST's names, or
          x_train/y_train (+ x_test/y_test), Keras's; read with allow_pickle=False;
  cifar   CIFAR-10/100's "python version" (data_batch_1..5 + test_batch, or train + test),
          unpickled by an unpickler that admits only dicts, lists, strings, bytes, numbers
          and plain numpy arrays, so a hostile file cannot run code;
  folder  ImageFolder: ROOT/<class>/*.png|jpg|..., or ROOT/train/<class>/... with optional
          ROOT/val/... and ROOT/test/... (nas.data.decode decodes it, in parallel, cached).
Each returns a `Raw`: the splits it found and the class names where the layout has them.
Every problem is a DataError of one line naming the file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nas.errors import DataError

__all__ = [
    "Raw",
    "detect",
    "read_cifar",
    "read_idx",
    "read_idx_folder",
    "read_npz",
]


@dataclass
class Raw:
    """What a reader found: split name -> (images uint8 (N, H, W, C), labels int64 (N,))."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: list[str] | None = None  # names, where the layout has them
    notes: list[str] = field(default_factory=list)  # said once at start (resized images...)


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
CIFAR_FILES = (("data_batch_1", "test_batch"), ("train", "test"))


def detect(path: Path) -> str:
    """Which layout `path` holds: "idx", "npz", "cifar" or "folder" (DataError if none)."""
    if not path.exists():
        raise DataError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise DataError(
            f"{path} is a file but not a .npz: give a .npz, or a folder (IDX files, CIFAR "
            "batches, or one subfolder of images per class)"
        )
    names = {p.name for p in path.iterdir()}
    files = {p.name for p in path.iterdir() if p.is_file()}
    if any("idx3-ubyte" in n for n in files):
        return "idx"
    if any(all(f in files for f in pair) for pair in CIFAR_FILES):
        return "cifar"
    if any(p.is_dir() for p in path.iterdir()):
        return "folder"
    if not names:
        raise DataError(f"data folder {path} is empty")
    raise DataError(
        f"{path} holds no data nas reads: expected IDX files (*-idx3-ubyte[.gz]), CIFAR "
        "batches (data_batch_1 + test_batch), or one subfolder of images per class"
    )


# -- IDX ---------------------------------------------------------------------------------


def read_idx(path: Path, expected_dims: int, how_to_get: str = "") -> np.ndarray:
    """One IDX file of unsigned bytes (magic 0x0000080N, big-endian sizes), gzipped or not."""
    hint = f": {how_to_get}" if how_to_get else ""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b" or path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"missing file {path}{hint}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"corrupt IDX file {path} ({e}){hint}") from None
    if len(raw) < 4:
        raise DataError(f"corrupt IDX file {path} (too short){hint}")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim != expected_dims:
        raise DataError(
            f"corrupt IDX file {path} (bad IDX header: expected unsigned bytes "
            f"in {expected_dims} dimensions){hint}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt IDX file {path} (truncated header){hint}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(
            f"corrupt IDX file {path} (header says {count} bytes of data, file "
            f"has {len(raw) - header}){hint}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The images and labels files of one split ("train" or "test"), or None."""
    words = ("train",) if split == "train" else ("t10k", "test")
    found = sorted(
        p for p in folder.iterdir() if "idx3-ubyte" in p.name and any(w in p.name for w in words)
    )
    if not found:
        return None
    images = found[0]
    labels = images.with_name(images.name.replace("images-idx3", "labels-idx1"))
    if not labels.exists():
        raise DataError(f"{images} has no labels file beside it (expected {labels.name})")
    return images, labels


def read_idx_folder(folder: Path, how_to_get: str = "") -> Raw:
    """train (and test, where present) from a folder of IDX files."""
    splits = {}
    for split in ("train", "test"):
        pair = _idx_pair(folder, split)
        if pair is None:
            if split == "train":
                hint = f": {how_to_get}" if how_to_get else ""
                raise DataError(
                    f"missing file {folder / 'train-images-idx3-ubyte.gz'} (no training "
                    f"images in {folder}){hint}"
                )
            continue
        x, y = read_idx(pair[0], 3, how_to_get), read_idx(pair[1], 1, how_to_get)
        if len(x) != len(y):
            raise DataError(
                f"{split} files disagree in {folder}: {len(x)} images, {len(y)} labels"
            )
        splits[split] = (x[..., None], y.astype(np.int64))
    return Raw(splits)


# -- .npz ---------------------------------------------------------------------------------

NPZ_NAMES = (
    {"train": ("train_images", "train_labels"), "val": ("val_images", "val_labels"),
     "test": ("test_images", "test_labels")},
    {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")},
)  # fmt: skip


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each member's shape and dtype from its header alone (nothing decoded)."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    major, _ = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f, max_header_size=1 << 20)
                plain = dtype.fields is None and not dtype.hasobject
                out[info.filename[:-4]] = (tuple(shape), dtype.str if plain else "object")
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz ({e})") from None
    return out


def read_npz(path: Path) -> Raw:
    """train (+ val, test) from a .npz of uint8 images (N, H, W) or (N, H, W, C)."""
    shapes = npz_shapes(path)
    names = next((n for n in NPZ_NAMES if n["train"][0] in shapes), None)
    if names is None:
        raise DataError(
            f"{path} has no training images: expected train_images/train_labels or "
            f"x_train/y_train (it holds {', '.join(sorted(shapes)) or 'nothing'})"
        )
    splits = {}
    with np.load(path, allow_pickle=False) as z:
        for split, (xn, yn) in names.items():
            if xn not in shapes:
                continue
            if yn not in shapes:
                raise DataError(f"{path} has {xn} but no {yn}")
            for n in (xn, yn):
                if shapes[n][1] == "object":
                    raise DataError(f"{path}: {n} holds Python objects; nas reads numbers only")
            try:
                x, y = z[xn], z[yn]
            except (ValueError, OSError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: {xn}/{yn} cannot be read ({e})") from None
            splits[split] = (_images(x, f"{path}: {xn}"), _labels(y, len(x), f"{path}: {yn}"))
    return Raw(splits)


def _images(x: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 -> (N, H, W, C); anything else is refused."""
    if x.dtype != np.uint8:
        raise DataError(
            f"{what} is {x.dtype}, not uint8: save images as uint8 0..255 "
            "(e.g. (x * 255).round().astype(np.uint8))"
        )
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{what} has shape {x.shape}: expected (N, H, W) grey or (N, H, W, 1 or 3)"
        )
    return x


def _labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Integer labels, one per image, as int64 (N,)."""
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y  # MedMNIST stores (N, 1)
    if y.ndim != 1:
        raise DataError(f"{what} has shape {y.shape}: expected one integer label per image")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{what} holds non-integer labels (e.g. {y[y != np.round(y)][:1]})")
    elif y.dtype.kind not in "iu":
        raise DataError(f"{what} is {y.dtype}: labels must be integers")
    if len(y) != n:
        raise DataError(f"{what}: {len(y)} labels for {n} images")
    return y.astype(np.int64)


# -- CIFAR python batches -------------------------------------------------------------------


class _SafeUnpickler(pickle.Unpickler):
    """Admits dicts, lists, strings, bytes, numbers and plain numpy arrays: nothing else.

    A pickle names the callables that rebuild its objects; a hostile one names os.system.
    The only names allowed are numpy's array reconstructors, ndarray and dtype (a CIFAR
    batch's 'data' and 'labels' are arrays or lists) and the text-to-bytes codec; object
    arrays are refused after loading."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2: text -> bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused: the file asks for {module}.{name}")


def unpickle(path: Path) -> object:
    """A pickle through the restricted unpickler (DataError for anything else)."""
    try:
        with path.open("rb") as f:
            return _SafeUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"missing file {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path} is not a CIFAR batch nas can read safely ({e}); a CIFAR batch holds "
            "only a dict of arrays, lists and strings"
        ) from None


def _key(d: dict, *names: str) -> object:
    for n in names:
        for k in (n, n.encode()):
            if k in d:
                return d[k]
    return None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = unpickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR batch (a {type(d).__name__}, not a dict)")
    data = _key(d, "data")
    labels = _key(d, "labels", "fine_labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path} is not a CIFAR batch (no 'data' array or 'labels')")
    if data.dtype == object:
        raise DataError(f"{path}: 'data' holds Python objects; a CIFAR batch holds uint8")
    if data.ndim != 2 or data.shape[1] % 3 or data.dtype != np.uint8:
        raise DataError(
            f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 (N, 3 * side * side)"
        )
    side = int(round((data.shape[1] // 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        raise DataError(f"{path}: rows of {data.shape[1]} values are not 3 square planes")
    x = data.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)  # CHW planes -> (N, H, W, C)
    y = np.asarray(labels)
    if y.dtype == object:
        raise DataError(f"{path}: labels hold Python objects; they must be integers")
    return np.ascontiguousarray(x), _labels(y, len(x), f"{path}: labels")


def read_cifar(folder: Path) -> Raw:
    """CIFAR-10 (data_batch_* + test_batch, batches.meta) or CIFAR-100 (train + test, meta)."""
    if (folder / "data_batch_1").exists():
        train = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
        test, meta, names_key = folder / "test_batch", folder / "batches.meta", "label_names"
    else:
        train = [folder / "train"]
        test, meta, names_key = folder / "test", folder / "meta", "fine_label_names"
    parts = [_cifar_batch(p) for p in train]
    splits = {
        "train": (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    }
    if test.exists():
        splits["test"] = _cifar_batch(test)
    classes = None
    if meta.exists():
        m = unpickle(meta)
        names = _key(m, names_key) if isinstance(m, dict) else None
        if isinstance(names, list) and all(isinstance(n, (str, bytes)) for n in names):
            classes = [n.decode() if isinstance(n, bytes) else n for n in names]
    return Raw(splits, classes)
