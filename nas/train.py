"""Train one architecture for a budget of images and score it: a trial's inner loop, and
`python -m nas.train`, the final training of an exported architecture.

airbench-style: the dataset already sits on the device as uint8 tensors, each step
gathers a batch by index, converts and resizes it there; no DataLoader, no workers.
SGD with Nesterov momentum, LR warm-up then linear decay to zero (see nas.budget). On
CUDA the step runs in bf16 autocast with channels_last, replayed as a CUDA graph
(nas.step); on the CPU in fp32, eagerly. The timed part is the training steps alone,
bracketed by device synchronisation.

`python -m nas.train best.json --epochs N` trains an architecture (a config JSON or a
nas.export file) on all 60k training images and scores it on the 10k test set, the
first and only place the test set is used; it writes a checkpoint and a result JSON.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nas.budget import TrainBudget
from nas.config import ArchConfig
from nas.model import build_model
from nas.step import TensorLRSGD, autocast, device_batch, make_step, memory_format

__all__ = ["Diverged", "TrainResult", "evaluate", "main", "pick_device", "train_and_evaluate"]

EVAL_BATCH = {"cuda": 1000, "cpu": 50}  # on the CPU small batches stay in cache: 3x faster


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    accuracy: float  # fraction of the evaluation images classified correctly
    eval_images: int
    final_loss: float  # mean training loss over the last 10% of steps
    steps: int
    train_images: int  # images actually drawn (steps * batch size)
    train_seconds: float  # the training steps alone, device-synchronised
    images_per_second: float  # over all steps, warm-up and graph capture included
    warmup_seconds: float  # until steady state: warm-up + capture + 1st replay, or 1st eager step
    eval_seconds: float  # BN re-estimate (if any) and scoring
    device: str
    cuda_graph: bool


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for 'cuda' without one is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"unknown device {name!r}; choose auto, cuda or cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_and_evaluate(
    config: ArchConfig,
    budget: TrainBudget,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    model: nn.Module | None = None,
    cuda_graph: bool | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> TrainResult:
    """Train a fresh model (seeded by budget.seed) and score it on (eval_x, eval_y).

    Tensors are uint8 images (N, 28, 28) and int64 labels on the device to train on.
    Only the first budget.val_images evaluation images are scored. cuda_graph (default:
    on CUDA) replays each step as one CUDA graph; False runs the same step eagerly.
    on_step(step, loss) is called after each step with the step's loss as a 0-dim device
    tensor (reading it waits for the device; accumulate it there instead).
    """
    device = train_x.device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph needs the data on a CUDA device")
    torch.manual_seed(budget.seed)
    if model is None:
        model = build_model(config)
    model = model.to(device=device, memory_format=memory_format(device)).train()
    opt = TensorLRSGD(
        list(model.parameters()),
        momentum=budget.momentum,
        weight_decay=budget.weight_decay,
        nesterov=budget.momentum > 0,
    )
    n, bs, steps = len(train_x), budget.batch_size, budget.steps
    if n < bs:
        raise ValueError(f"only {n} training images for a batch of {bs}")
    step_fn, eager_steps = make_step(
        model, opt, train_x, train_y, config.image_size, bs, budget.label_smoothing, cuda_graph
    )
    per_epoch = n // bs
    gen = torch.Generator(device=device).manual_seed(budget.seed)
    tail = max(1, steps // 10)
    loss_sum = torch.zeros((), device=device)

    _sync(device)
    t0 = time.perf_counter()
    warmup_seconds = 0.0
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(n, device=device, generator=gen)
        i = step % per_epoch
        loss = step_fn(order[i * bs : (i + 1) * bs], budget.lr_at(step))
        if step >= steps - tail:
            loss_sum += loss.float()
        if step == eager_steps:  # warm-up (and capture) done: the rest is steady state
            _sync(device)
            warmup_seconds = time.perf_counter() - t0
        if step % 100 == 99 and not torch.isfinite(loss):
            raise Diverged(f"training loss became {loss.item()} at step {step + 1}")
        if on_step is not None:
            on_step(step, loss)
    _sync(device)
    train_seconds = time.perf_counter() - t0
    final_loss = loss_sum.item() / tail
    if not math.isfinite(final_loss):
        raise Diverged(f"training loss became {final_loss} by the end of training")

    t1 = time.perf_counter()
    if budget.bn_recalibration:
        recalibrate_bn(model, config, train_x[: budget.bn_recalibration], bs)
    m = min(budget.val_images, len(eval_x))
    accuracy = evaluate(model, config, eval_x[:m], eval_y[:m])
    _sync(device)
    return TrainResult(
        accuracy=accuracy,
        eval_images=m,
        final_loss=final_loss,
        steps=steps,
        train_images=steps * bs,
        train_seconds=train_seconds,
        images_per_second=steps * bs / train_seconds,
        warmup_seconds=warmup_seconds,
        eval_seconds=time.perf_counter() - t1,
        device=_device_name(device),
        cuda_graph=cuda_graph,
    )


@torch.no_grad()
def recalibrate_bn(model: nn.Module, config: ArchConfig, x: torch.Tensor, batch: int) -> None:
    """Re-estimate every BN layer's running mean/var with the final weights (exact average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the recalibration batches
    model.train()
    for i in range(0, len(x), batch):
        with autocast(x.device):
            model(device_batch(x[i : i + batch], config.image_size))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum


@torch.no_grad()
def evaluate(model: nn.Module, config: ArchConfig, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of the eval-mode model (BN uses its running statistics)."""
    model.eval()
    device = x.device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    step = EVAL_BATCH.get(device.type, 1000)
    for i in range(0, len(x), step):
        with autocast(device):
            logits = model(device_batch(x[i : i + step], config.image_size))
        correct += (logits.argmax(dim=1) == y[i : i + step]).sum()
    return correct.item() / max(1, len(x))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


# -- python -m nas.train -----------------------------------------------------------------

RECIPES = {
    # this project's: SGD + Nesterov 0.9, weight decay 5e-4, warm-up, linear decay to 0
    "ours": {"momentum": 0.9, "weight_decay": 5e-4, "warmup": 0.1, "schedule": "linear"},
    # the d2l chapter's: plain SGD at a constant learning rate
    "d2l": {"momentum": 0.0, "weight_decay": 0.0, "warmup": 0.0, "schedule": "constant"},
}


def _run(argv: list[str] | None) -> int:
    from tqdm import tqdm

    from nas.cli import UsageError, make_parser
    from nas.cost import load_config_file
    from nas.data import DataError, load_fashion_mnist

    p = make_parser(
        "nas.train",
        "Train an exported architecture on all 60k training images and report its accuracy "
        "on the 10k test set. Writes OUT.pt (checkpoint) and OUT.result.json.",
    )
    p.add_argument("config", help="architecture JSON or nas.export file")
    p.add_argument("--epochs", type=float, default=10.0, help="epochs of 60k images (default 10)")
    p.add_argument("--batch-size", type=int, default=256, help="default 256 (as d2l)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default 0.1)")
    p.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="ours",
        help="ours: Nesterov SGD, decay to 0; d2l: plain SGD, constant LR",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX .gz files")
    p.add_argument("--out", help="output prefix (default: the config path without .json)")
    a = p.parse_args(argv)
    if not (math.isfinite(a.epochs) and 0 < a.epochs <= 1000):
        raise UsageError(f"--epochs must be in (0, 1000], got {a.epochs}")
    config = load_config_file(a.config)
    try:
        device = pick_device(a.device)
        data = load_fashion_mnist(a.data_dir).to(device)
    except (ValueError, DataError) as e:
        raise UsageError(str(e)) from None
    x, y = data.full_train()
    per_epoch = len(x) // a.batch_size  # steps per epoch (the remainder is dropped, as d2l)
    budget = TrainBudget(
        name=f"final-{a.recipe}",
        train_images=max(1, round(a.epochs * per_epoch)) * a.batch_size,
        val_images=len(data.test_x),
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        **RECIPES[a.recipe],
    )
    out = Path(a.out) if a.out else Path(a.config).with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(a.seed)
    model = build_model(config)
    epochs = math.ceil(budget.steps / per_epoch)
    print(
        f"training {config.describe()} for {a.epochs:g} epochs ({budget.steps} steps, "
        f"recipe {a.recipe}, lr {a.lr}) on {device}",
        flush=True,
    )
    loss_sum = torch.zeros((), device=device)
    epoch_losses: list[float] = []  # mean training loss of each epoch, as d2l prints it
    t0 = time.perf_counter()
    with tqdm(total=budget.steps, unit="step", dynamic_ncols=True, disable=None) as bar:

        def on_step(step: int, loss: torch.Tensor) -> None:
            loss_sum.add_(loss.detach().float())  # on the device: no wait per step
            bar.set_description(f"epoch {step // per_epoch + 1}/{epochs}")
            bar.update(1)
            if (step + 1) % per_epoch == 0 or step + 1 == budget.steps:
                epoch_losses.append(loss_sum.item() / (step % per_epoch + 1))
                tqdm.write(  # one line per epoch, also when the output goes to a file
                    f"epoch {step // per_epoch + 1}/{epochs}: train loss "
                    f"{epoch_losses[-1]:.4f}, {time.perf_counter() - t0:.0f} s",
                    file=sys.stdout,
                )
                sys.stdout.flush()
                loss_sum.zero_()

        r = train_and_evaluate(
            config, budget, x, y, data.test_x, data.test_y, model=model, on_step=on_step
        )
    result = {
        "config": config.to_dict(),
        "test_accuracy": r.accuracy,
        "test_images": r.eval_images,
        "epochs": a.epochs,
        "train_images": r.train_images,
        "train_seconds": r.train_seconds,
        "images_per_second": r.images_per_second,
        "final_train_loss": r.final_loss,
        "epoch_train_losses": epoch_losses,
        "recipe": a.recipe,
        "budget": budget.to_dict(),
        "device": r.device,
        "torch": torch.__version__,
    }
    ckpt = out.with_name(out.name + ".pt")
    torch.save(
        {"config": config.to_dict(), "state_dict": model.state_dict(), "result": result}, ckpt
    )
    res = out.with_name(out.name + ".result.json")
    res.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"test accuracy {r.accuracy:.4f} on {r.eval_images:,} test images; "
        f"{r.train_seconds:.1f} s of training ({r.images_per_second:,.0f} img/s)\n"
        f"wrote {ckpt} and {res}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from nas.cli import run_cli

    return run_cli("nas.train", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
