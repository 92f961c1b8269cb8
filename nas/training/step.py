"""One training step (gather a batch, forward, backward, SGD update), eager or as a CUDA graph.

Small DenseNets are bound by kernel launches, not arithmetic: a step is hundreds of
small kernels. On CUDA the whole step, batch gather and resize included, is captured
once per trial in a CUDA graph (`CUDAGraph.capture_begin`, no torch.compile, so
nothing is compiled per architecture) and replayed with one launch. What changes between steps
lives in static device tensors: the batch indices and the learning rate. That is why
the optimizer here is SGD written with foreach ops on a 0-d LR tensor: the same
update as `torch.optim.SGD(nesterov=True)` (tests compare the two), but capturable.
Streams, the capture itself, graph memory pools and what happens when a capture fails
are nas.training.gpu's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from nas.data.dataset import crop_flip, to_input
from nas.errors import error_line
from nas.training.gpu import GRAPHS, CudaGraphRunner, is_out_of_memory, release_memory

__all__ = [
    "GraphRunner",
    "Step",
    "TensorLRSGD",
    "autocast",
    "device_batch",
    "make_step",
    "memory_format",
    "precision",
]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/cuBLAS pick kernels)
T = TypeVar("T")


class GraphRunner(Protocol):
    """What the step needs of a CUDA graph (nas.training.gpu.CudaGraphRunner; a CPU stand-in in the
    tests): run fn eagerly to warm up, capture it (running nothing), replay, its pool's
    bytes (None before a capture), and reset (drop the graph and its pool)."""

    def warmup(self, fn: Callable[[], T]) -> T: ...
    def capture(self, fn: Callable[[], T]) -> T: ...
    def replay(self) -> None: ...
    def pool_bytes(self) -> int | None: ...
    def reset(self) -> None: ...


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (cuDNN's fast layout for bf16 convs), the default on the CPU."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def precision(device: torch.device) -> str:
    """How a trial on this device computes (part of a study's record: accuracies differ)."""
    return "bf16 autocast (CUDA)" if device.type == "cuda" else "fp32 (CPU)"


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA, off on the CPU; no weight-cast cache, so CUDA graphs can
    capture it."""
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False
    )


def device_batch(
    images: torch.Tensor, image_size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, H, W, C) on the device -> float (B, C, S, S) in the device's layout."""
    x = to_input(images, image_size, dtype)
    return x.contiguous(memory_format=memory_format(images.device))


class TensorLRSGD:
    """SGD with momentum, Nesterov and L2 weight decay; LR is a 0-d tensor on the device.

    Per parameter p with gradient g (as torch.optim.SGD, dampening 0):
        g <- g + wd * p;  buf <- m * buf + g;  g <- g + m * buf (Nesterov) or buf;  p <- p - lr * g
    Momentum buffers start at zero, which equals torch's "buf = g" on the first step.
    """

    def __init__(
        self, params: list[nn.Parameter], momentum: float, weight_decay: float, nesterov: bool
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        device = self.params[0].device
        self.lr = torch.zeros((), device=device, dtype=self.params[0].dtype)  # as the weights
        self.bufs = [torch.zeros_like(p) for p in self.params] if momentum else []

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            torch._foreach_mul_(self.bufs, self.momentum)
            torch._foreach_add_(self.bufs, grads)
            if self.nesterov:
                grads = torch._foreach_add(grads, self.bufs, alpha=self.momentum)
            else:
                grads = self.bufs
        torch._foreach_sub_(self.params, torch._foreach_mul(grads, self.lr))


class Step:
    """step.run(indices, lr) -> loss (a device tensor, valid until the next call).

    Eager, or with a graph runner (nas.training.gpu.CudaGraphRunner on CUDA): the first
    WARMUP_STEPS calls run eagerly on the runner's side stream, the next call captures the
    step (and replays it), later calls replay it. A capture that runs out of memory is
    retried once after the cache is emptied (and raised the second time); one that fails
    for another reason turns graphs off for this process (nas.training.gpu.GRAPHS) and the trial
    goes on eagerly from the same state (a capture runs nothing). `mode` says which:
    "cuda-graph", "eager" or "eager: <why>".
    """

    def __init__(
        self,
        body: Callable[[], torch.Tensor],
        static_idx: torch.Tensor,
        opt: TensorLRSGD,
        runner: GraphRunner | None,
        mode: str,
        static_aug: torch.Tensor | None = None,
    ) -> None:
        self._body, self._idx, self._opt, self.runner = body, static_idx, opt, runner
        self._aug = static_aug  # (B, 3) crop offsets and flips, with augmentation
        self.mode = mode
        self.eager_steps = WARMUP_STEPS if runner is not None else 0
        self._calls = 0
        self._loss: torch.Tensor | None = None  # the graph's static output, once captured

    def run(self, idx: torch.Tensor, lr: float, aug: torch.Tensor | None = None) -> torch.Tensor:
        self._idx.copy_(idx)
        if self._aug is not None:
            assert aug is not None, "this step augments: give its crop offsets and flips"
            self._aug.copy_(aug)
        self._opt.lr.fill_(lr)
        self._calls += 1
        if self.runner is None:
            return self._body()
        if self._calls <= WARMUP_STEPS:
            return self.runner.warmup(self._body)
        if self._loss is None:
            self._loss = self._capture()
            if self._loss is None:  # fell back to eager steps
                return self._body()
        self.runner.replay()  # on this trial's stream; releases the GIL
        return self._loss

    def _capture(self) -> torch.Tensor | None:
        assert self.runner is not None

        def step() -> torch.Tensor:
            self._opt.zero_grad()  # grads are allocated inside the graph's private pool
            return self._body()

        for attempt in (1, 2):
            try:
                loss = self.runner.capture(step)
                self.mode = "cuda-graph"
                return loss
            except Exception as e:
                self.runner.reset()
                if not is_out_of_memory(e):
                    reason = f"capture failed: {error_line(e)}"
                    GRAPHS.turn_off(reason)
                    self.mode, self.runner = f"eager: {reason}", None
                    self._opt.zero_grad()
                    return None
                if attempt == 2:
                    raise
            # out of the except block: the failed capture's tensors, which the traceback
            # holds, are gone; cached blocks go back to CUDA, and the capture is retried
            self._opt.zero_grad()
            release_memory()
        raise AssertionError("unreachable")

    def memory_bytes(self) -> int | None:
        """GPU memory of the step: weights, momentum and the graph's pool (nas.training.gpu);
        None unless a graph was captured."""
        if self.runner is None or self._loss is None:  # no graph (and no pool) to read
            return None
        pool = self.runner.pool_bytes()
        if pool is None:
            return None
        kept = [*self._opt.params, *self._opt.bufs]
        return sum(p.numel() * p.element_size() for p in kept) + pool

    def close(self) -> None:
        """Drop the graph: its pool goes back to the allocator."""
        if self.runner is not None:
            self.runner.reset()


def make_step(
    model: nn.Module,
    opt: TensorLRSGD,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    image_size: int,
    batch_size: int,
    cuda_graph: bool,
    label_smoothing: float = 0.0,
    runner: GraphRunner | None = None,
    augment: str = "none",
) -> Step:
    """The training step. cuda_graph: replay it as a CUDA graph through `runner` (default
    a nas.training.gpu.CudaGraphRunner on the data's device), unless this process has turned
    graphs off (then eager, and `mode` says why)."""
    device = train_x.device
    dtype = next(model.parameters()).dtype  # float32; float64 in the exactness tests
    static_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
    # crop offsets and flips: drawn outside the step (a graph replays fixed kernels)
    static_aug = None
    if augment == "crop-flip":
        static_aug = torch.zeros(batch_size, 3, dtype=torch.long, device=device)

    def body() -> torch.Tensor:
        images = train_x[static_idx]
        if static_aug is not None:
            images = crop_flip(images, static_aug)
        x = device_batch(images, image_size, dtype)
        with autocast(device):
            loss = F.cross_entropy(model(x), train_y[static_idx], label_smoothing=label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    if not cuda_graph:
        return Step(body, static_idx, opt, None, "eager", static_aug)
    if GRAPHS.off is not None:
        return Step(body, static_idx, opt, None, f"eager: {GRAPHS.off}", static_aug)
    # "cuda-graph" from the capture on; a run of no more steps than the warm-up never gets there
    warmup_only = f"eager: the run ended within the {WARMUP_STEPS} warm-up steps"
    graph = runner or CudaGraphRunner(device)
    return Step(body, static_idx, opt, graph, warmup_only, static_aug)
