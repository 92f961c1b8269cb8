"""The data a study searches on: read from one of five layouts, split, fingerprinted.

`load_data(SOURCE)` reads Fashion-MNIST (the default, from Debian's package
`dataset-fashion-mnist`, or `--data-dir` / $NAS_DATA_DIR), a folder of IDX files, a
folder of class subfolders of images, a .npz, or CIFAR-10/100's python batches
(nas.data.formats, nas.data.decode). Nothing is ever downloaded. Images stay uint8, (N, H, W, C).

Splits: the data's own val and test splits where it has them; otherwise validation is
held out of train by a fixed permutation (a keyed SplitMix64 hash, integer arithmetic
only, so the same on every host and library version): min(10,000, N/6) images. The
search scores on validation only; the test split is for the final training of an
exported architecture. Per-channel mean and std of the training split (exact, from a
histogram of the bytes) go into every network's config (nas.arch.config), so the network,
and the exported .pt2, normalise its own input. The fingerprint (a content hash of every
split, shapes, classes, split sizes, normalisation) is what a study stores and compares:
the same images from another layout give the same fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.data.formats import (
    Raw,
    detect,
    npz_shapes,
    read_cifar,
    read_idx_folder,
    read_npz,
)
from nas.errors import DataError

__all__ = [
    "DEFAULT_DATA_DIR",
    "Dataset",
    "crop_flip",
    "describe",
    "load_data",
    "load_fashion_mnist",
    "resolve_data_dir",
    "split_permutation",
    "to_input",
]

DEFAULT_SOURCE = "fashion-mnist"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "NAS_DATA_DIR"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
VAL_SIZE = 10_000  # images held out of the training set for validation, at most
SPLIT_SEED = 0  # the train/val split never changes with the training seed
MIN_SIDE = 8  # pixels: smaller images are refused
CROP_PAD = 4  # crop-flip: random crop of the image padded by 4 px (with zeros), then flip
DEVICE_SHARE = 0.5  # the data may take at most this share of the device's memory
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
HOW_TO_GET = (
    "install Debian's package with `apt-get install dataset-fashion-mnist`, or point "
    f"--data-dir / {ENV_VAR} at a folder holding the four Fashion-MNIST IDX .gz files"
)


@dataclass(frozen=True)
class Dataset:
    """uint8 images (N, H, W, C) and int64 labels (N,), on whatever device they were moved
    to; the test split may be empty (the data has none)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str  # what --data named: "fashion-mnist", or a path
    kind: str  # "fashion-mnist", "idx", "folder", "npz" or "cifar"
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, of the training split, pixels scaled to [0, 1]
    std: tuple[float, ...]
    # What makes two runs' accuracies comparable: a sha256 (first 16 hex digits) of every
    # split's images and labels, shapes, the number of classes, split sizes and
    # normalisation (class names are not: they change no accuracy).
    fingerprint: dict[str, object]
    notes: tuple[str, ...] = field(default=())  # said once at start (resized images, ...)
    skip_bad_images: bool = False  # a folder's unreadable images left out (--skip-bad-images)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def side(self) -> int:
        """The images' side in pixels (the larger of height and width)."""
        return int(max(self.train_x.shape[1:3]))

    def to(self, device: torch.device | str) -> Dataset:
        moved = {
            name: getattr(self, name).to(device)
            for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
        }
        return replace(self, **moved)

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_x, self.train_y

    @property
    def val(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.val_x, self.val_y

    @property
    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_x, self.test_y

    def full_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """train + val, for the final training run."""
        return torch.cat((self.train_x, self.val_x)), torch.cat((self.train_y, self.val_y))

    def input_spec(self) -> dict[str, object]:
        """What a network needs from the data (nas.arch.config.ArchConfig's input fields)."""
        return {
            "in_channels": self.channels,
            "num_classes": len(self.classes),
            "input_mean": self.mean,
            "input_std": self.std,
        }

    def record(self) -> dict[str, object]:
        """Where the data came from and what it is: stored with a study (not compared;
        nas.refine reloads from it) and written into an export."""
        h, w, c = self.train_x.shape[1:]
        return {
            "source": self.source,
            "kind": self.kind,
            "shape": [int(h), int(w), int(c)],
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            **({"skip_bad_images": True} if self.skip_bad_images else {}),
        }


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """--data-dir, else $NAS_DATA_DIR, else Debian's location."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DATA_DIR


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
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (population) of uint8 (N, H, W, C) scaled to [0, 1], exact:
    from each channel's 256-bin histogram, summed in float64."""
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[-1]):
        counts = np.zeros(256, dtype=np.int64)
        for i in range(0, len(x), 4096):  # in chunks: no copy of a large array
            counts += np.bincount(x[i : i + 4096, ..., c].reshape(-1), minlength=256)
        n = counts.sum()
        mean = float((counts * values).sum() / n)
        var = float((counts * (values - mean) ** 2).sum() / n)
        means.append(round(mean, 6))
        stds.append(round(max(var, 1e-12) ** 0.5, 6))
    return tuple(means), tuple(stds)


def _check(raw: Raw, where: str) -> int:
    """Every split: same image shape, labels in range; returns the number of classes."""
    x0 = raw.splits["train"][0]
    if len(x0) == 0:
        raise DataError(f"{where} has no training images")
    for split, (x, y) in raw.splits.items():
        if x.shape[1:] != x0.shape[1:]:
            raise DataError(
                f"{where}: {split} images are {x.shape[1:]}, train images {x0.shape[1:]}"
            )
        if len(y) and y.min() < 0:
            raise DataError(f"{where}: {split} labels include {y.min()}; labels start at 0")
    h, w = x0.shape[1:3]
    if min(h, w) < MIN_SIDE:
        raise DataError(
            f"{where}: images are {h}x{w} pixels; nas needs at least {MIN_SIDE}x{MIN_SIDE}"
        )
    top = int(max(y.max() for _, y in raw.splits.values() if len(y)))
    n = len(raw.classes) if raw.classes else top + 1
    if top >= n:
        raise DataError(f"{where}: labels go up to {top}, but there are {n} class names")
    present = np.unique(raw.splits["train"][1])
    if len(present) < 2:
        name = raw.classes[present[0]] if raw.classes else int(present[0])
        raise DataError(
            f"{where}: the training images hold one class only ({name!r}); "
            "a classifier needs at least two"
        )
    return n


def _build(raw: Raw, source: str, kind: str, where: str) -> Dataset:
    """Split (holding validation out of train where the data has none), fingerprint."""
    n_classes = _check(raw, where)
    train_x, train_y = raw.splits["train"]
    notes = list(raw.notes)
    if "val" in raw.splits:
        val_x, val_y = raw.splits["val"]
        val_from = "given"
    else:
        n_val = min(VAL_SIZE, len(train_x) // 6)
        perm = split_permutation(len(train_x), SPLIT_SEED)
        val, train = perm[:n_val], perm[n_val:]
        val_from = f"held out of train by key {SPLIT_SEED}: {_sha(val.astype('<i8'))}"
        val_x, val_y = train_x[val], train_y[val]
        train_x, train_y = train_x[train], train_y[train]
    if len(val_x) == 0:
        raise DataError(
            f"{where}: too few training images ({len(train_x)}) to hold out validation"
        )
    empty_x = np.zeros((0, *train_x.shape[1:]), dtype=np.uint8)
    test_x, test_y = raw.splits.get("test", (empty_x, np.zeros(0, dtype=np.int64)))
    mean, std = channel_stats(train_x)
    classes = tuple(raw.classes or (str(i) for i in range(n_classes)))
    missing = [
        classes[i] for i in sorted(set(range(n_classes)) - set(np.unique(train_y).tolist()))
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        notes.append(
            f"{len(missing):,} of {n_classes:,} classes have no training images ({shown}): "
            "labels are class numbers 0..N-1, so a gap in them makes empty classes"
        )
    if kind == DEFAULT_SOURCE:
        classes = FASHION_CLASSES
    fingerprint = {
        "content_sha256": _sha(train_x, train_y, val_x, val_y, test_x, test_y),
        "shape": list(train_x.shape[1:]),
        "classes": len(classes),
        "train": len(train_x),
        "val": len(val_x),
        "test": len(test_x),
        "val_from": val_from,
        "mean": list(mean),
        "std": list(std),
    }

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.require(a, requirements=["C", "W"]))

    return Dataset(
        train_x=t(train_x),
        train_y=t(train_y),
        val_x=t(val_x),
        val_y=t(val_y),
        test_x=t(test_x),
        test_y=t(test_y),
        source=source,
        kind=kind,
        classes=classes,
        mean=mean,
        std=std,
        fingerprint=fingerprint,
        notes=tuple(notes),
    )


def memory_limit(device: torch.device) -> tuple[int, str]:
    """Bytes the data may take on `device`, and the limit in words."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * DEVICE_SHARE), f"{_size(total * DEVICE_SHARE)} (half of this GPU's)"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        avail = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 1 << 62, "no limit known"
    share = avail * DEVICE_SHARE
    return int(share), f"{_size(share)} (half of this machine's available memory)"


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_fits(nbytes: int, device: torch.device | None, what: str) -> None:
    """Refuse, with one line naming the size and the limit, data that would not fit."""
    if device is None:
        return
    limit, words = memory_limit(device)
    if nbytes > limit:
        raise DataError(
            f"{what} needs {_size(nbytes)} as uint8, more than {words}: nas keeps "
            "the whole dataset on the device; use fewer or smaller images (resize them "
            "before, e.g. into a .npz)"
        )


def _estimate(path: Path, kind: str) -> int | None:
    """Bytes of a layout's images as uint8, from headers only, where that is cheap."""
    if kind == "npz":
        shapes = npz_shapes(path)
        return sum(int(np.prod(s)) for n, (s, _) in shapes.items() if "image" in n or "x_" in n)
    if kind == "cifar":
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    if kind == "idx":
        return sum(_idx_bytes(p) for p in path.iterdir() if "idx3-ubyte" in p.name)
    return None


def _idx_bytes(path: Path) -> int:
    """Bytes of an IDX file's data, from its header (0 if unreadable: read_idx says why)."""
    import gzip
    import struct

    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(16)
        return int(np.prod(struct.unpack(">3I", head[4:16])))
    except (OSError, EOFError, struct.error):
        return 0


def load_data(
    source: str | None = None,
    data_dir: str | Path | None = None,
    device: torch.device | None = None,
    skip_bad_images: bool = False,
) -> Dataset:
    """Read SOURCE ("fashion-mnist", the default, or a path) on the CPU.

    `device`: where the data will go; data larger than half its memory is refused before
    it is read (a folder: once decoded). `skip_bad_images`: a folder's unreadable images
    are left out (said in a note) instead of stopping the read; other layouts have none.
    """
    source = source or DEFAULT_SOURCE
    if source == DEFAULT_SOURCE:
        folder = resolve_data_dir(data_dir)
        if folder.exists() and not folder.is_dir():
            raise DataError(
                f"{folder} is a file, not a folder of Fashion-MNIST files: {HOW_TO_GET}"
            )
        if not folder.is_dir():
            raise DataError(f"Fashion-MNIST folder {folder} does not exist: {HOW_TO_GET}")
        check_fits(_estimate(folder, "idx") or 0, device, f"Fashion-MNIST in {folder}")
        return _build(
            read_idx_folder(folder, HOW_TO_GET), source, source, f"Fashion-MNIST in {folder}"
        )
    path = Path(source).expanduser()
    kind = detect(path)
    estimate = _estimate(path, kind)
    if estimate is not None:
        check_fits(estimate, device, str(path))
    if kind == "idx":
        raw = read_idx_folder(path)
    elif kind == "npz":
        raw = read_npz(path)
    elif kind == "cifar":
        raw = read_cifar(path)
    else:
        from nas.data.decode import read_folder

        raw, cached = read_folder(path, skip_bad=skip_bad_images)
        check_fits(sum(s[0].nbytes for s in raw.splits.values()), device, str(path))
        if cached:
            raw.notes.insert(0, "decoded images read from the cache")
        built = _build(raw, str(path.resolve()), kind, str(path))
        return replace(built, skip_bad_images=skip_bad_images)
    return _build(raw, str(path.resolve()), kind, str(path))


def load_fashion_mnist(data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST from its four IDX .gz files (Debian's, --data-dir or $NAS_DATA_DIR)."""
    return load_data(DEFAULT_SOURCE, data_dir)


def describe(data: Dataset) -> str:
    """One line: what was read, its shape, classes and splits."""
    h, w, c = data.train_x.shape[1:]
    test = f"{len(data.test_x):,} test" if len(data.test_x) else "no test split"
    val = "val" if data.fingerprint["val_from"] == "given" else "val (held out of train)"
    names = ", ".join(data.classes[:4]) + (", ..." if len(data.classes) > 4 else "")
    kind = "" if data.kind == data.source else f" ({data.kind})"
    return (
        f"data {data.source}{kind}: {h}x{w}, {c} channel{'s' if c > 1 else ''}, "
        f"{len(data.classes)} classes ({names}); {len(data.train_x):,} train, "
        f"{len(data.val_x):,} {val}, {test}"
    )


def to_input(images: torch.Tensor, image_size: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (B, H, W) or (B, H, W, C) -> float (B, C, S, S) in [0, 1], resized bilinearly
    on their device (d2l's loader does ToTensor() and Resize(96), bilinear: the same on
    tensors). The network normalises its input itself (nas.arch.model)."""
    if images.dim() == 3:
        images = images.unsqueeze(-1)
    x = images.permute(0, 3, 1, 2).to(dtype).div_(255.0)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x


def crop_flip(images: torch.Tensor, aug: torch.Tensor, pad: int = CROP_PAD) -> torch.Tensor:
    """The CIFAR recipe on uint8 (B, H, W, C): each image padded by `pad` zeros, cropped at
    offset aug[:, 0:2] (each in 0..2*pad) and mirrored left-right where aug[:, 2] is 1.

    Fixed shapes and no host sync: the offsets are drawn outside (from the trial's
    generator), so the step stays one CUDA graph."""
    b, h, w, _ = images.shape
    dev = images.device
    rows = aug[:, 0:1] - pad + torch.arange(h, device=dev)  # (B, H) source rows
    ar = torch.arange(w, device=dev)
    cols = aug[:, 1:2] - pad + torch.where(aug[:, 2:3] == 1, w - 1 - ar, ar)  # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    picked = images[
        torch.arange(b, device=dev)[:, None, None],
        rows.clamp(0, h - 1)[:, :, None],
        cols.clamp(0, w - 1)[:, None, :],
    ]  # (B, H, W, C)
    return picked * inside[..., None]


def draw_augment(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 3) int64: crop offsets in 0..2*pad and a flip bit, per image of an epoch."""
    shifts = torch.randint(0, 2 * CROP_PAD + 1, (n, 2), generator=generator, device=device)
    flips = torch.randint(0, 2, (n, 1), generator=generator, device=device)
    return torch.cat((shifts, flips), dim=1)


def default_augment(channels: int) -> str:
    """crop-flip for colour images (the CIFAR recipe), none for grey."""
    return "crop-flip" if channels == 3 else "none"
