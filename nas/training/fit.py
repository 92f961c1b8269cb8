"""Train one architecture for a budget of images and score it: a trial's inner loop
(`nas.study.objective`), also used by `python -m nas.train` for the final training.

airbench-style: the dataset already sits on the device as uint8 tensors, each step
gathers a batch by index, converts and resizes it there; no DataLoader, no workers.
SGD with Nesterov momentum, LR warm-up then linear decay to zero (see nas.training.budget). On
CUDA the step runs in bf16 autocast with channels_last, replayed as a CUDA graph
(nas.training.step); on the CPU in fp32, eagerly. The timed part is the training steps alone,
bracketed by synchronising the trial's own CUDA stream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from nas.arch.config import ArchConfig
from nas.arch.model import build_model
from nas.data.dataset import draw_augment
from nas.training.budget import TrainBudget
from nas.training.step import (
    GraphRunner,
    Step,
    TensorLRSGD,
    autocast,
    device_batch,
    make_step,
    memory_format,
)

__all__ = [
    "Diverged",
    "TrainResult",
    "evaluate",
    "pick_device",
    "recalibrate_bn",
    "train_and_evaluate",
]

AUGMENT_SEED = 0x5EED  # crop-flip draws from seed + this: independent of the data order
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
    step_mode: str = "eager"  # "cuda-graph", "eager", or "eager: <why graphs were off>"
    # GPU memory of a training step: weights, momentum and the step graph's memory pool
    # in whole allocator segments (nas.training.gpu); None when not replayed as a CUDA graph
    step_memory_bytes: int | None = None

    @property
    def cuda_graph(self) -> bool:
        """The steps after warm-up were replays of one CUDA graph."""
        return self.step_mode == "cuda-graph"


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
    """Wait for this thread's stream, not the whole device: trials running beside this
    one (nas.parallel.threads) keep their own pace, and a device-wide synchronize would break
    a graph capture under way in another thread."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


Split = tuple[torch.Tensor, torch.Tensor]  # (images, labels): a Dataset's train, val or test


def train_and_evaluate(
    config: ArchConfig,
    budget: TrainBudget,
    train: Split,
    evaluate: Split,
    *,
    model: nn.Module | None = None,
    cuda_graph: bool | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    on_warm: Callable[[], None] | None = None,
    runner: GraphRunner | None = None,
) -> TrainResult:
    """Train a fresh model (seeded by budget.seed) on `train` and score it on `evaluate`.

    Each is (uint8 images (N, H, W, C), int64 labels) on the device to train on: a
    Dataset's `train` and `val` in a search.
    `model`: a model the caller built (and seeded); else one is built here, seeded by
    budget.seed.
    Only the first budget.val_images evaluation images are scored. cuda_graph (default:
    on CUDA) replays each step as one CUDA graph; False runs the same step eagerly.
    on_step(step, loss) is called after each step with the step's loss as a 0-dim device
    tensor (reading it waits for the device; accumulate it there instead). on_warm() is
    called once, when warm-up and graph capture are over. `runner`: the CUDA graph's
    stand-in in CPU tests of the graphed step (nas.training.step.GraphRunner).
    """
    (train_x, train_y), (eval_x, eval_y) = train, evaluate
    device = train_x.device
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    if cuda_graph and device.type != "cuda" and runner is None:
        raise ValueError("cuda_graph needs the data on a CUDA device")
    if model is None:
        model = build_model(config, budget.seed)
    model = model.to(device=device, memory_format=memory_format(device)).train()
    opt = TensorLRSGD(
        list(model.parameters()),
        momentum=budget.momentum,
        weight_decay=budget.weight_decay,
        nesterov=budget.momentum > 0,
    )
    n, bs = len(train_x), budget.batch_size
    if n < bs:
        raise ValueError(f"only {n} training images for a batch of {bs}")
    stepper = make_step(
        model,
        opt,
        train_x,
        train_y,
        image_size=config.image_size,
        batch_size=bs,
        cuda_graph=cuda_graph,
        label_smoothing=budget.label_smoothing,
        runner=runner,
        augment=budget.augment,
    )
    try:
        return _train(
            stepper, config, budget, model, train_x, train_y, eval_x, eval_y, on_step, on_warm
        )
    finally:
        stepper.close()  # the graph's pool back to the allocator, whatever happened


def _train(
    stepper: Step,
    config: ArchConfig,
    budget: TrainBudget,
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    on_step: Callable[[int, torch.Tensor], None] | None,
    on_warm: Callable[[], None] | None,
) -> TrainResult:
    device = train_x.device
    n, bs, steps = len(train_x), budget.batch_size, budget.steps
    per_epoch = n // bs
    gen = torch.Generator(device=device).manual_seed(budget.seed)
    tail = max(1, steps // 10)
    loss_sum = torch.zeros((), device=device)

    _sync(device)
    t0 = time.perf_counter()
    warmup_seconds = 0.0
    augment = budget.augment == "crop-flip"
    aug_gen = torch.Generator(device=device).manual_seed(budget.seed + AUGMENT_SEED)
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(n, device=device, generator=gen)
            if augment:  # an epoch's crops and flips at once; the order's stream untouched
                aug = draw_augment(n, aug_gen, device)
        i = step % per_epoch
        batch = slice(i * bs, (i + 1) * bs)
        loss = stepper.run(order[batch], budget.lr_at(step), aug[batch] if augment else None)
        if step >= steps - tail:
            loss_sum += loss.float()
        if step == stepper.eager_steps:  # warm-up (and capture) done: the rest is steady state
            _sync(device)
            warmup_seconds = time.perf_counter() - t0
            if on_warm is not None:
                on_warm()
        if step % 100 == 99 and not torch.isfinite(loss):
            raise Diverged(f"training loss became {loss.item()} at step {step + 1}")
        if on_step is not None:
            on_step(step, loss)
    _sync(device)
    train_seconds = time.perf_counter() - t0
    final_loss = loss_sum.item() / tail
    if not math.isfinite(final_loss):
        raise Diverged(f"training loss became {final_loss} by the end of training")

    memory = stepper.memory_bytes()  # None unless a graph was captured (a run of <= 3 steps)
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
        step_mode=stepper.mode,
        step_memory_bytes=memory,
    )


@torch.no_grad()
def recalibrate_bn(model: nn.Module, config: ArchConfig, x: torch.Tensor, batch: int) -> None:
    """Re-estimate every BN layer's running mean/var with the final weights (exact average).

    Batch j (from 0) enters with momentum 1/(j+1), a Python float: the cumulative average
    BatchNorm computes with momentum=None, whose factor 1/num_batches_tracked it reads
    from a device tensor, a host sync per layer per batch.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    model.train()
    dtype = next(model.parameters()).dtype  # float32; float64 in the exactness test
    for j, i in enumerate(range(0, len(x), batch)):
        for bn in bns:
            bn.momentum = 1.0 / (j + 1)
        with autocast(x.device):
            model(device_batch(x[i : i + batch], config.image_size, dtype))
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
