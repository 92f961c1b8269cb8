"""Fashion-MNIST from its four IDX .gz files, split once and for all into train/val/test.

Default location: Debian's package `dataset-fashion-mnist` (/usr/share/datasets/fashion-
mnist); `--data-dir` or the NAS_DATA_DIR environment variable point elsewhere. Nothing
is ever downloaded. The 60k training images are split by a fixed permutation (seed 0,
independent of any training seed) into 50k train and 10k validation: the search scores
on validation only. The permutation is defined by integer arithmetic alone (a keyed
SplitMix64 hash), so it is the same with every torch and numpy version on every host,
and the data carry fingerprints of their files and of that split, which a study stores;
the 10k test set is for the final training of an exported architecture. Images stay
uint8 (N, 28, 28) here; `to_input` turns them into float tensors on the device, resized
there when the architecture's image size is not 28.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_DATA_DIR",
    "DataError",
    "FashionMNIST",
    "load_fashion_mnist",
    "read_idx",
    "split_permutation",
    "resolve_data_dir",
    "to_input",
]

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "NAS_DATA_DIR"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
VAL_SIZE = 10_000  # images held out of the 60k training set for validation
SPLIT_SEED = 0  # the train/val split never changes with the training seed
HOW_TO_GET = (
    "install Debian's package with `apt-get install dataset-fashion-mnist`, or point "
    f"--data-dir / {ENV_VAR} at a folder holding the four Fashion-MNIST IDX .gz files"
)


class DataError(Exception):
    """The dataset is missing or corrupt (a user-facing, one-line error)."""


@dataclass(frozen=True)
class FashionMNIST:
    """uint8 images (N, 28, 28) and int64 labels (N,), on whatever device they were moved to."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # folder the files came from
    # What makes two runs' accuracies comparable: sha256 (first 16 hex digits) of the four
    # files' decoded contents, of the validation indices, and the split's sizes.
    fingerprint: dict[str, object]

    def to(self, device: torch.device | str) -> FashionMNIST:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return FashionMNIST(**moved, source=self.source, fingerprint=self.fingerprint)

    def full_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All 60k training images (train + val), for the final training run."""
        return torch.cat((self.train_x, self.val_x)), torch.cat((self.train_y, self.val_y))


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """--data-dir, else $NAS_DATA_DIR, else Debian's location."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DATA_DIR


def read_idx(path: Path, expected_dims: int) -> np.ndarray:
    """Read one gzipped IDX file of unsigned bytes (magic 0x0000080N, big-endian sizes)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"missing Fashion-MNIST file {path}: {HOW_TO_GET}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"corrupt Fashion-MNIST file {path} ({e}): {HOW_TO_GET}") from None
    if len(raw) < 4:
        raise DataError(f"corrupt Fashion-MNIST file {path} (too short): {HOW_TO_GET}")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim != expected_dims:
        raise DataError(
            f"corrupt Fashion-MNIST file {path} (bad IDX header: expected unsigned bytes "
            f"in {expected_dims} dimensions): {HOW_TO_GET}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"corrupt Fashion-MNIST file {path} (truncated header): {HOW_TO_GET}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(
            f"corrupt Fashion-MNIST file {path} (header says {count} bytes of data, file "
            f"has {len(raw) - header}): {HOW_TO_GET}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def split_permutation(n: int, seed: int) -> np.ndarray:
    """A fixed permutation of range(n): the indices ordered by a keyed SplitMix64 hash.

    Integer arithmetic only (uint64, wrapping), so the result never depends on a library's
    random stream. The hash is a bijection of 64-bit integers: no ties to break.
    """
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z += np.uint64(seed) * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return np.argsort(z, kind="stable")


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def load_fashion_mnist(data_dir: str | Path | None = None) -> FashionMNIST:
    """Read the four files and split train into train/val (on the CPU)."""
    folder = resolve_data_dir(data_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder of Fashion-MNIST files: {HOW_TO_GET}")
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist: {HOW_TO_GET}")
    arrays = {
        name: read_idx(folder / fname, 3 if name.endswith("images") else 1)
        for name, fname in FILES.items()
    }
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(x) != len(y):
            raise DataError(
                f"Fashion-MNIST {split} files disagree: {len(x)} images, {len(y)} labels"
            )
        if x.shape[1:] != (28, 28):
            raise DataError(f"Fashion-MNIST {split} images are {x.shape[1:]}, not 28x28")
        if y.size and y.max() > 9:
            raise DataError(f"Fashion-MNIST {split} labels go up to {y.max()}, not 0..9")
    x = torch.from_numpy(arrays["train_images"].copy())
    y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    n_val = min(VAL_SIZE, len(x) // 6)  # tiny test files keep a 5:1 split
    perm = split_permutation(len(x), SPLIT_SEED)
    fingerprint = {
        "files_sha256": _sha(*(arrays[name] for name in FILES)),
        "val_indices_sha256": _sha(perm[:n_val].astype("<i8")),
        "train": len(x) - n_val,
        "val": n_val,
        "test": len(arrays["test_labels"]),
    }
    perm_t = torch.from_numpy(perm)
    val, train = perm_t[:n_val], perm_t[n_val:]
    return FashionMNIST(
        train_x=x[train],
        train_y=y[train],
        val_x=x[val],
        val_y=y[val],
        test_x=torch.from_numpy(arrays["test_images"].copy()),
        test_y=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        source=str(folder),
        fingerprint=fingerprint,
    )


def to_input(images: torch.Tensor, image_size: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, 28, 28) -> (B, 1, S, S) in [0, 1], resized bilinearly on their device.

    d2l's loader does ToTensor() and Resize(96) (bilinear); this is the same on tensors.
    """
    x = images.unsqueeze(1).to(dtype).div_(255.0)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x
