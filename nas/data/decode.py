"""A folder of images (ImageFolder layout) decoded once, in parallel, and cached.

Layouts: ROOT/<class>/*.png|jpg|... (one split: train), or ROOT/train/<class>/... with
optional ROOT/val/<class>/... and ROOT/test/<class>/.... Classes are the subfolder names,
sorted; within a split, images are ordered by file name (then class), so a folder written
from an array in index order (00000.png, 00001.png, ...) reads back in that order.

Decoding runs with Pillow in worker processes with a progress bar. First each file's
header gives its size and mode (no pixels decoded); every image is then decoded upright
(turned by its EXIF orientation, as a phone's photo is shown), to the most common size
(others resized bilinearly, as Pillow does) and to grey if all are grey, else RGB. The
arrays are cached as .npy files under $NAS_CACHE_DIR (default ~/.cache/nas/data), keyed
by the files' names, sizes and modification times and CACHE_VERSION: a second run reads
them at once, and a changed file makes a new key. An unreadable image stops the read,
naming it, unless it is asked to be left out (--skip-bad-images: said in a note).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from nas.data.formats import IMAGE_SUFFIXES, Raw
from nas.errors import DataError

__all__ = ["cache_dir", "read_folder"]

SPLITS = ("train", "val", "test")
CACHE_VERSION = 2  # 2: images turned upright by their EXIF orientation
ORIENTATION = 0x0112  # the EXIF tag
QUARTER_TURNS = {5, 6, 7, 8}  # orientations that turn the image a quarter: W and H swap
CHUNK = 256  # files per task handed to a worker process


def cache_dir() -> Path:
    return Path(os.environ.get("NAS_CACHE_DIR") or Path.home() / ".cache" / "nas" / "data")


def _hidden(p: Path) -> bool:
    """A name starting with '.': .ipynb_checkpoints/, .git/, macOS's ._photo.jpg."""
    return p.name.startswith(".")


def _list(root: Path) -> tuple[dict[str, list[tuple[Path, str]]], int]:
    """split -> [(file, class name)], ordered by file name then class; and how many
    hidden files and folders were left out (with all they hold)."""
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    hidden = sum(1 for p in root.iterdir() if _hidden(p))
    others = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name not in SPLITS and not _hidden(p)
    )
    if split_dirs and others:
        raise DataError(
            f"{root} has {', '.join(s + '/' for s in split_dirs)} and also {others[0]}/: put "
            "class folders inside train/ (and val/, test/), or use no split folders at all"
        )
    if "train" not in split_dirs:
        if split_dirs:
            raise DataError(
                f"{root} has {', '.join(split_dirs)}/ but no train/: put the training "
                "images in train/<class>/"
            )
        split_dirs = {"train": root}
    out = {}
    for split, folder in split_dirs.items():
        if folder != root:
            hidden += sum(1 for p in folder.iterdir() if _hidden(p))
        classes = sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p))
        if not classes:
            raise DataError(f"{folder} has no class subfolders (expected {folder}/<class>/*.png)")
        files = []
        for c in classes:
            hidden += sum(1 for p in c.rglob("*") if _hidden(p))
            found = [
                p
                for p in c.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(c).parts)
            ]
            if not found:
                raise DataError(
                    f"class folder {c} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            files += [(p, c.name) for p in found]
        files.sort(key=lambda fc: (fc[0].name, fc[1], str(fc[0])))
        out[split] = files
    return out, hidden


def _header(path: str) -> tuple[tuple[int, int], str] | str:
    """(width, height), mode from the header; or the reason it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(ORIENTATION) in QUARTER_TURNS:
                w, h = h, w  # the size it is shown at, upright
            return (w, h), im.mode
    except Exception as e:  # Pillow raises many kinds for a bad file
        return f"{type(e).__name__}: {e}"


GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _decode(job: tuple[list[str], tuple[int, int], bool]) -> list[np.ndarray | str]:
    """Decode files upright to uint8 (H, W, C) of one size; a string for a file that
    fails."""
    from PIL import Image, ImageOps

    paths, size, rgb = job
    out: list[np.ndarray | str] = []
    for p in paths:
        try:
            with Image.open(p) as opened:
                im = ImageOps.exif_transpose(opened)  # a copy, turned as its EXIF says
                if im.mode.startswith("I"):  # 16- or 32-bit grey: scaled to 8 bits, not clipped
                    wide = np.asarray(im).astype(np.float64) * (255 / 65535)
                    im = Image.fromarray(np.clip(np.round(wide), 0, 255).astype(np.uint8))
                im = im.convert("RGB" if rgb else "L")
                if im.size != size:
                    im = im.resize(size, Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
            out.append(a if rgb else a[..., None])
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


def _key(root: Path, files: dict[str, list[tuple[Path, str]]], skip_bad: bool) -> str:
    """The cache entry's name: the version, the folder, whether unreadable images are left
    out (a run without it must still refuse them), and every file's name, size and time."""
    h = hashlib.sha256(f"{CACHE_VERSION} {root.resolve()} skip_bad={skip_bad}".encode())
    for split, items in files.items():
        for p, c in items:
            st = p.stat()
            h.update(
                f"{split}\0{c}\0{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
    return h.hexdigest()[:24]


def _bad(failures: list[tuple[Path, str]]) -> DataError:
    """One line: the first bad image and why, a few more by name, how many per class, and
    the option that leaves them out."""
    p, why = failures[0]
    hint = " (--skip-bad-images leaves unreadable images out)"
    if len(failures) == 1:
        return DataError(f"cannot read image {p}: {why}{hint}")
    names = ", ".join(q.name for q, _ in failures[1:4]) + (", ..." if len(failures) > 4 else "")
    return DataError(
        f"cannot read image {p}: {why} (and {len(failures) - 1} other images: {names}; "
        f"per class folder: {_per_class(failures)}){hint}"
    )


def _per_class(failures: list[tuple[Path, str]]) -> str:
    """'coat 3, shirt 1': how many of `failures` lie in each class folder."""
    per_class = Counter(q.parent.name for q, _ in failures)
    return ", ".join(f"{c} {n}" for c, n in sorted(per_class.items()))


def _pool_map(fn, jobs: list, desc: str, total: int):
    """fn over jobs in worker processes (in order), with a progress bar of `total` files."""
    from tqdm import tqdm

    workers = min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)
    try:
        if workers <= 1:
            results = [fn(j) for j in jobs]
            bar.update(total)
            return results
        # forkserver, not fork: the caller may hold threads (torch's, tqdm's) a fork copies
        # mid-lock; the workers need only Pillow and numpy
        with ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("forkserver")
        ) as ex:
            results = []
            for r in ex.map(fn, jobs):
                results.append(r)
                bar.update(len(r))
            return results
    finally:
        bar.close()


def _headers(paths: list[str]) -> list[tuple[tuple[int, int], str] | str]:
    return [_header(p) for p in paths]


def read_folder(root: Path, skip_bad: bool = False) -> tuple[Raw, bool]:
    """The folder's splits as arrays, and whether they came from the cache. An image that
    cannot be read stops the read (all such named in one line), unless `skip_bad`: then it
    is left out, said in a note, and the arrays (so the fingerprint) hold only the rest; a
    class folder left without images is refused all the same."""
    files, hidden = _list(root)
    key = _key(root, files, skip_bad)
    cached = cache_dir() / key
    if (cached / "meta.json").exists():
        return _load_cache(cached), True
    everything = [p for items in files.values() for p, _ in items]
    headers = [
        h
        for part in _pool_map(_headers, _chunks(everything), "reading headers", len(everything))
        for h in part
    ]
    # every unreadable image is found (headers, then pixels) before any is refused: the one
    # line names them all at once
    bad = [(p, h) for p, h in zip(everything, headers) if isinstance(h, str)]
    readable = [(p, h) for p, h in zip(everything, headers) if not isinstance(h, str)]
    sizes = Counter(h[0] for _, h in readable)
    if not sizes:
        raise _bad(bad)  # nothing readable at all
    target = sizes.most_common(1)[0][0]
    if min(target) < 8:
        raise DataError(
            f"images in {root} are {target[0]}x{target[1]} pixels; nas needs at least 8x8"
        )
    rgb = any(h[1] not in GREY_MODES for _, h in readable)
    paths = [p for p, _ in readable]
    jobs = [(c, target, rgb) for c in _chunks(paths)]
    arrays = [a for part in _pool_map(_decode, jobs, "decoding", len(paths)) for a in part]
    bad += [(p, a) for p, a in zip(paths, arrays) if isinstance(a, str)]
    order = {p: i for i, p in enumerate(everything)}
    bad.sort(key=lambda pw: order[pw[0]])  # in the folder's order, as _list gives it
    if bad and not skip_bad:
        raise _bad(bad)
    image = {p: a for p, a in zip(paths, arrays) if not isinstance(a, str)}
    files = _without(files, bad)
    classes = sorted({c for items in files.values() for _, c in items})
    index = {c: i for i, c in enumerate(classes)}
    splits = {
        split: (
            np.stack([image[p] for p, _ in items]),
            np.array([index[c] for _, c in items], dtype=np.int64),
        )
        for split, items in files.items()
    }
    used = sum(len(items) for items in files.values())
    resized = sum(1 for p, h in readable if p in image and h[0] != target)
    notes = []
    if hidden:
        notes.append(
            f"{hidden:,} hidden files and folders left out (names starting with '.', such as "
            ".ipynb_checkpoints/ or macOS's ._ files)"
        )
    if bad:
        notes.append(_skipped(bad, len(everything)))
    if resized:
        notes.append(
            f"{resized:,} of {used:,} images resized to {target[0]}x{target[1]} "
            "(the most common size)"
        )
    raw = Raw(splits, classes, notes)
    _save_cache(cached, raw)
    return raw, False


def _chunks(paths: list[Path]) -> list[list[str]]:
    """Files in tasks of CHUNK for the worker processes."""
    return [[str(p) for p in paths[i : i + CHUNK]] for i in range(0, len(paths), CHUNK)]


def _without(
    files: dict[str, list[tuple[Path, str]]], bad: list[tuple[Path, str]]
) -> dict[str, list[tuple[Path, str]]]:
    """`files` less the unreadable ones; a class folder left with none is refused, as an
    empty one is (_list)."""
    if not bad:
        return files
    why = dict(bad)
    out = {}
    for split, items in files.items():
        kept = [(p, c) for p, c in items if p not in why]
        for c in sorted({c for _, c in items} - {c for _, c in kept}):
            mine = [p for p, pc in items if pc == c]
            raise DataError(
                f"class folder {mine[0].parent} holds no readable images ({len(mine)} "
                f"unreadable, the first {mine[0].name}: {why[mine[0]]})"
            )
        out[split] = kept
    return out


def _skipped(bad: list[tuple[Path, str]], total: int) -> str:
    """The note for images left out by --skip-bad-images: how many, per class folder, and
    the first by name and reason."""
    p, why = bad[0]
    return (
        f"{len(bad):,} of {total:,} images could not be read and are left out "
        f"(--skip-bad-images; per class folder: {_per_class(bad)}); the first: {p}: {why}"
    )


def _save_cache(folder: Path, raw: Raw) -> None:
    """Write the arrays, then meta.json last (its presence marks a complete entry)."""
    try:
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for split, (x, y) in raw.splits.items():
            np.save(tmp / f"{split}_x.npy", x)
            np.save(tmp / f"{split}_y.npy", y)
        meta = {"splits": list(raw.splits), "classes": raw.classes, "notes": raw.notes}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, folder)
    except OSError as e:
        if (folder / "meta.json").exists():  # another process cached the same images first
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # a read-only home: decode again next time, say so once
        print(f"note: decoded images not cached in {folder} ({e})", file=sys.stderr)


def _load_cache(folder: Path) -> Raw:
    meta = json.loads((folder / "meta.json").read_text())
    splits = {
        s: (np.load(folder / f"{s}_x.npy"), np.load(folder / f"{s}_y.npy")) for s in meta["splits"]
    }
    return Raw(splits, meta["classes"], meta["notes"])
