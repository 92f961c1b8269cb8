"""How long a folder of images takes to read: decode cold, from the cache, and to a trial.

Writes Fashion-MNIST's 60,000 training and 10,000 test images as an ImageFolder of PNGs
(FOLDER/train/<label>/NNNNN.png, FOLDER/test/...), then times
  cold    nas.data.dataset.load_data on it with an empty cache (Pillow, in parallel, then cached);
  warm    the same again, read from the cache;
  search  `python -m nas.search --data FOLDER --trials 1 --preset tiny --budget smoke` in a
          fresh process (cache warm), to the line of its first trial;
and checks that the cache gives back exactly the decoded arrays, and the test split
exactly the IDX file's.

    python benchmarks/data.py --folder /tmp/fmnist-png --out benchmarks/results/data-folder.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nas.data.dataset import load_data, load_fashion_mnist


def write_png_folder(folder: Path) -> float:
    """The 70k real images as PNGs; returns the seconds it took (skipped if present)."""
    from PIL import Image

    if (folder / "test").is_dir():
        return 0.0
    data = load_fashion_mnist()
    t0 = time.perf_counter()
    x, y = data.full_train()  # train + val: the original 60k, in another order
    for split, (images, labels) in (("train", (x, y)), ("test", (data.test_x, data.test_y))):
        for i, (image, label) in enumerate(zip(images.numpy(), labels.tolist())):
            d = folder / split / str(label)
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(d / f"{i:05d}.png")
    return time.perf_counter() - t0


def first_trial_seconds(folder: Path, workdir: Path) -> float:
    """Seconds from starting nas.search to its first trial's line."""
    argv = [sys.executable, "-m", "nas.search", "--data", str(folder), "--trials", "1"]
    argv += ["--preset", "tiny", "--budget", "smoke", "--device", "cpu", "--study", "bench"]
    t0 = time.perf_counter()
    with subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("trial"):
                seconds = time.perf_counter() - t0
                p.kill()
                return seconds
    raise RuntimeError("nas.search printed no trial line")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", default="/tmp/fmnist-png", help="where to write the PNGs")
    p.add_argument("--out", help="write the results as JSON here")
    a = p.parse_args(argv)
    folder = Path(a.folder)
    write_seconds = write_png_folder(folder)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NAS_CACHE_DIR"] = cache
        t0 = time.perf_counter()
        cold = load_data(str(folder))
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = load_data(str(folder))
        warm_s = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as work:
            search_s = first_trial_seconds(folder, Path(work))
    idx = load_fashion_mnist()
    same = all(
        torch.equal(getattr(warm, n), getattr(cold, n)) for n in ("train_x", "val_x", "test_x")
    )
    test_equal = torch.equal(cold.test_x, idx.test_x) and torch.equal(cold.test_y, idx.test_y)
    n = sum(len(t) for t in (cold.train_x, cold.val_x, cold.test_x))
    results = {
        "images": n,
        "png_write_seconds": round(write_seconds, 1) if write_seconds else None,
        "cold_decode_seconds": round(cold_s, 2),
        "cold_images_per_second": round(n / cold_s),
        "warm_cache_seconds": round(warm_s, 2),
        "first_trial_seconds_warm": round(search_s, 2),
        "cache_equals_decode": same,
        "test_split_equals_idx": test_equal,  # written in the IDX file's order
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(results, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
