"""`python -m nas.train CONFIG.json --epochs N`: the final training of a chosen architecture.

Trains an architecture (a config JSON or a nas.export file) on all the data's training
images (train + val) with this project's recipe or the d2l chapter's, scores it on the
data's test split (the first and only place the test set is used), and writes a
checkpoint, a result JSON and the trained network to ship (nas.deploy.artifact): OUT.pt2,
a torch.export program (portable), and OUT.cpu.pt2, the same compiled by AOTInductor for
this kind of CPU (the faster one, its latency timed and printed). Both are fp32 on the CPU,
take uint8 images of any size, (B, H, W) grey or (B, H, W, C) colour, and return
(B, classes) logits, resizing and normalisation included, so that they load and run with
PyTorch alone, without this package. The data is the export file's own (its "data"
record) unless --data names another. The training loop is a trial's (nas.training.fit),
run for whole epochs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas.arch.config import ArchConfig, load_config_file
from nas.arch.model import build_model
from nas.cli import add_skip_bad_images, make_parser, positive_int, run_cli
from nas.data.dataset import Dataset, default_augment, describe, load_data
from nas.deploy.artifact import compile_package, export_program, image_shape
from nas.deploy.timing import describe_shipped, package_latency
from nas.errors import DataError, UsageError, first_line
from nas.training.budget import MIN_STEPS, TrainBudget
from nas.training.fit import pick_device, train_and_evaluate

__all__ = ["RECIPES", "main"]

SHORT_RUN_BN_IMAGES = 2_560  # BN re-estimate for runs under one epoch (10 batches of 256)

RECIPES = {
    # this project's: SGD + Nesterov 0.9, weight decay 5e-4, warm-up, linear decay to 0
    "ours": {"momentum": 0.9, "weight_decay": 5e-4, "warmup": 0.1, "schedule": "linear"},
    # the d2l chapter's: plain SGD at a constant learning rate
    "d2l": {"momentum": 0.0, "weight_decay": 0.0, "warmup": 0.0, "schedule": "constant"},
}


def _parser() -> argparse.ArgumentParser:
    p = make_parser(
        "nas.train",
        "Train an exported architecture on all the data's training images (train + val) "
        "and report its accuracy on the data's test split. Writes OUT.pt (checkpoint), "
        "OUT.result.json, OUT.pt2 (the trained network as a torch.export program: "
        "torch.export.load('OUT.pt2').module()(images)) and OUT.cpu.pt2 (the same compiled "
        "by AOTInductor for this kind of CPU, faster: "
        "torch._inductor.aoti_load_package('OUT.cpu.pt2')(images)), both loading without "
        "this package and taking uint8 images of any size, (B, H, W) grey or (B, H, W, C) "
        "colour (docs/commands.md has the contract).",
    )
    p.add_argument("config", help="architecture JSON or nas.export file")
    p.add_argument(
        "--epochs", type=float, default=10.0, help="epochs of train + val images (default 10)"
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="default 256 (as d2l)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="ours",
        help="ours: Nesterov SGD, decay to 0; d2l: plain SGD, constant LR",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights and the order of the images (default 0): "
        "another seed gives another run of the same network, to see its seed noise",
    )
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto (default): a CUDA GPU if PyTorch sees one (bf16, CUDA graph), else the CPU "
        "(fp32)",
    )
    p.add_argument(
        "--data",
        metavar="SOURCE",
        help="the images (as nas.search --data; default: the export file's own data, else "
        "fashion-mnist)",
    )
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX .gz files")
    add_skip_bad_images(p, "on by default where the search had it")
    p.add_argument(
        "--augment",
        choices=("auto", "none", "crop-flip"),
        default="auto",
        help="default auto: the export's, else crop-flip for colour images, none for grey",
    )
    p.add_argument("--out", help="output prefix (default: the config path without .json)")
    p.add_argument(
        "--no-cpu-package",
        action="store_true",
        help="write OUT.pt2 only, not OUT.cpu.pt2 (its compile takes tens of seconds and "
        "needs a C++ compiler)",
    )
    return p


def _budget(a: argparse.Namespace, per_epoch: int, test_images: int, n: int) -> TrainBudget:
    """The final training's budget: whole batches (d2l's loader would also run the last
    partial batch of 96 images; every step here has the same shape, as a CUDA graph
    needs)."""
    return TrainBudget(
        name=f"final-{a.recipe}",
        train_images=max(1, round(a.epochs * per_epoch)) * a.batch_size,
        val_images=test_images,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        # Shorter than an epoch, BN's running statistics lag the weights (0.02 epoch scored
        # 0.12, near chance, on the test set): re-estimate them as the smoke budget does.
        bn_recalibration=min(SHORT_RUN_BN_IMAGES, n) if a.epochs < 1 else 0,
        **RECIPES[a.recipe],
    )


# A network learns from steps, not epochs: fewer than this and a run learns little (on a
# folder of 1,003 photos 9 steps of 256 scored 0.35, 124 steps of 32 0.86).
def few_steps_hint(images: int, batch: int, epochs: float, steps: int) -> str | None:
    """What to change when a run has too few steps to learn: a smaller batch (halved, not
    below 8), then more epochs; None when it has MIN_STEPS or more."""
    if steps >= MIN_STEPS:
        return None
    b = batch
    while b > 8 and (images // b) * epochs < MIN_STEPS:
        b //= 2
    per_epoch = max(1, images // b)
    e = epochs if per_epoch * epochs >= MIN_STEPS else math.ceil(MIN_STEPS / per_epoch)
    return (
        f"{steps} steps of {batch} images are too few to learn much (a run learns from "
        f"steps, not epochs): try --batch-size {b} --epochs {e:g} "
        f"({max(1, round(e * per_epoch))} steps)"
    )


def _exported(path: str) -> dict:
    """The export file's "data" record and budget (empty for a bare config JSON)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}  # load_config_file has said what is wrong
    return d if isinstance(d, dict) and "config" in d and "schema" in d else {}


def check_fits_data(config: ArchConfig, data: Dataset) -> None:
    """A config must take the data's channels and classes (one line if not)."""
    if config.in_channels != data.channels or config.num_classes != len(data.classes):
        raise UsageError(
            f"the architecture takes {config.in_channels}-channel images in "
            f"{config.num_classes} classes, the data {data.source} has {data.channels}-channel "
            f"images in {len(data.classes)} classes: train it on the data it was searched on "
            "(--data)"
        )


def _data(
    a: argparse.Namespace, exported: dict, config: ArchConfig
) -> tuple[Dataset, torch.device]:
    """--data, else the export's own data, on the device; refused unless it fits config."""
    record = exported.get("data") or {}
    source = a.data or record.get("source")
    skip = a.skip_bad_images or bool(record.get("skip_bad_images"))
    try:
        device = pick_device(a.device)
        data = load_data(source, a.data_dir, device, skip).to(device)
    except (ValueError, DataError) as e:
        where = f" (the data {a.config} was searched on; --data names another)"
        raise UsageError(str(e) + (where if source and not a.data else "")) from None
    print(describe(data), flush=True)
    for line in data.notes:  # resized, left out, read from the cache: as nas.search says
        print(f"note: {line}", flush=True)
    check_fits_data(config, data)
    if config.input_mean and (config.input_mean, config.input_std) != (data.mean, data.std):
        print(
            f"note: the network normalises its input with the statistics of the data it was "
            f"searched on (mean {list(config.input_mean)}), not this data's "
            f"({list(data.mean)})",
            flush=True,
        )
    return data, device


def _splits(data: Dataset) -> tuple[Any, ...]:
    """(train x, y, scored x, y, what is scored): train + val and test, or, for data
    without a test split, train and val (said)."""
    if len(data.test_x):
        x, y = data.full_train()
        return x, y, data.test_x, data.test_y, "test"
    print(
        f"note: {data.source} has no test split: trained on train only and scored on the "
        "validation split, which the search scored on too (an optimistic figure)",
        flush=True,
    )
    return data.train_x, data.train_y, data.val_x, data.val_y, "validation"


def _run(argv: list[str] | None) -> int:
    a = _parser().parse_args(argv)
    if not (math.isfinite(a.epochs) and 0 < a.epochs <= 1000):
        raise UsageError(f"--epochs must be in (0, 1000], got {a.epochs}")
    config = load_config_file(a.config)
    exported = _exported(a.config)
    data, device = _data(a, exported, config)
    augment = a.augment
    if augment == "auto":
        augment = (exported.get("budget") or {}).get("augment") or default_augment(data.channels)
    x, y, test_x, test_y, scored = _splits(data)
    per_epoch = len(x) // a.batch_size
    if per_epoch < 1:
        raise UsageError(
            f"{len(x):,} training images are fewer than one batch of {a.batch_size}: "
            f"use --batch-size {max(1, len(x) // 8)} or so"
        )
    budget = replace(_budget(a, per_epoch, len(test_x), len(x)), augment=augment)
    out = Path(a.out) if a.out else Path(a.config).with_suffix("")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: folder {out.parent} does not exist")
    model = build_model(config, a.seed)
    print(
        f"training {config.describe()} for {a.epochs:g} epoch{'s' if a.epochs != 1 else ''} "
        f"({budget.steps} steps, "
        f"recipe {a.recipe}, lr {a.lr}) on {device}",
        flush=True,
    )
    hint = few_steps_hint(len(x), a.batch_size, a.epochs, budget.steps)
    if hint:
        print(f"note: {hint}", flush=True)
    progress = EpochLines(budget, per_epoch, len(test_x), scored)
    with progress:
        r = train_and_evaluate(
            config, budget, (x, y), (test_x, test_y), model=model, on_step=progress
        )
    result = {
        "config": config.to_dict(),
        "data": data.record(),
        "scored_on": scored,
        "test_accuracy": r.accuracy,
        "test_images": r.eval_images,
        "epochs": a.epochs,
        "train_images": r.train_images,
        "train_seconds": r.train_seconds,
        "images_per_second": r.images_per_second,
        "final_train_loss": r.final_loss,
        "epoch_train_losses": progress.epoch_losses,
        "recipe": a.recipe,
        "bn_recalibration_images": budget.bn_recalibration,
        "budget": budget.to_dict(),
        "device": r.device,
        "torch": torch.__version__,
    }
    shape = image_shape(*data.train_x.shape[1:])
    written, program = _write(out, model, config, result, shape)
    print(
        f"{scored} accuracy {r.accuracy:.4f} on {r.eval_images:,} {scored} images"
        + (
            f" (BN statistics re-estimated on {budget.bn_recalibration:,} training images: "
            "the run was shorter than an epoch)"
            if budget.bn_recalibration
            else ""
        )
        + "; "
        f"{r.train_seconds:.1f} s of training ({r.images_per_second:,.0f} img/s)\n"
        f"wrote {', '.join(map(str, written))} (torch.export: loads without nas)",
        flush=True,
    )
    if not a.no_cpu_package:
        _ship_cpu_package(out, program, result, shape)
    return 0


def _ship_cpu_package(
    out: Path, program: torch.export.ExportedProgram, result: dict, shape: tuple[int, ...]
) -> None:
    """OUT.cpu.pt2, timed as shipped; its latency joins OUT.result.json. A failed compile
    (no C++ compiler, say) is one note: the portable OUT.pt2 is there."""
    package = out.with_name(out.name + ".cpu.pt2")
    package.unlink(missing_ok=True)  # an earlier run's must not stand beside this OUT.pt2
    print(f"compiling {package} (AOTInductor, for this kind of CPU) ...", flush=True)
    try:
        compile_package(program, package)
    except RuntimeError as e:
        print(f"note: {package} not written: {first_line(e)}", flush=True)
        return
    try:
        m = package_latency(package, shape)
    except RuntimeError as e:
        print(f"wrote {package}; note: its latency is not measured: {first_line(e)}")
        return
    result["latency_cpu_shipped"] = m.to_dict()
    res = out.with_name(out.name + ".result.json")
    res.write_text(json.dumps(result, indent=2) + "\n")
    ckpt = out.with_name(out.name + ".pt")  # its result as the JSON's
    torch.save({**torch.load(ckpt, weights_only=False), "result": result}, ckpt)
    print(f"wrote {package}: {describe_shipped(m, shape)}")


class EpochLines:
    """A progress bar over the steps and one line per epoch with its mean training loss
    (as d2l prints it), also when the output goes to a file; the loss is summed on the
    device, so no step waits for it."""

    def __init__(
        self, budget: TrainBudget, per_epoch: int, test_images: int, scored: str = "test"
    ) -> None:
        from tqdm import tqdm

        self.budget, self.per_epoch, self.test_images = budget, per_epoch, test_images
        self.scored = scored  # "test", or "validation" for data without a test split
        self.epochs = math.ceil(budget.steps / per_epoch)
        self.epoch_losses: list[float] = []
        self.bar = tqdm(total=budget.steps, unit="step", dynamic_ncols=True, disable=None)
        self.loss_sum: torch.Tensor | None = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> EpochLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()

    def __call__(self, step: int, loss: torch.Tensor) -> None:
        from tqdm import tqdm

        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), device=loss.device)
        self.loss_sum.add_(loss.detach().float())
        epoch = step // self.per_epoch + 1
        self.bar.set_description(f"epoch {epoch}/{self.epochs}")
        self.bar.update(1)
        last = step + 1 == self.budget.steps
        if (step + 1) % self.per_epoch == 0 or last:
            self.epoch_losses.append(self.loss_sum.item() / (step % self.per_epoch + 1))
            tqdm.write(
                f"epoch {epoch}/{self.epochs}: train loss {self.epoch_losses[-1]:.4f}, "
                f"{time.perf_counter() - self.t0:.0f} s",
                file=sys.stdout,
            )
            self.loss_sum.zero_()
        if last:  # then nas.training.fit scores: minutes on a CPU
            what = f"{self.test_images:,} {self.scored} images"
            if self.budget.bn_recalibration:
                what = f"BN re-estimate on {self.budget.bn_recalibration:,} train images, {what}"
            tqdm.write(f"scoring ({what}) ...", file=sys.stdout)
        sys.stdout.flush()


def _write(
    out: Path, model: nn.Module, config: ArchConfig, result: dict, shape: tuple[int, ...]
) -> tuple[list[Path], torch.export.ExportedProgram]:
    """OUT.pt (checkpoint), OUT.result.json and OUT.pt2 (the torch.export program, also
    returned)."""
    ckpt = out.with_name(out.name + ".pt")
    torch.save(
        {"config": config.to_dict(), "state_dict": model.state_dict(), "result": result}, ckpt
    )
    res = out.with_name(out.name + ".result.json")
    res.write_text(json.dumps(result, indent=2) + "\n")
    program = out.with_name(out.name + ".pt2")
    exported = export_program(model, config, shape)
    torch.export.save(exported, program)
    return [ckpt, res, program], exported


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.train", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
