"""One training step (gather a batch, forward, backward, SGD update), eager or as a CUDA graph.

Small DenseNets are bound by kernel launches, not arithmetic: a step is hundreds of
small kernels. On CUDA the whole step, batch gather and resize included, is captured
once per trial in a CUDA graph (`CUDAGraph.capture_begin`, no torch.compile, so
nothing is compiled per architecture) and replayed with one launch. What changes between steps
lives in static device tensors: the batch indices and the learning rate. That is why
the optimizer here is SGD written with foreach ops on a 0-d LR tensor: the same
update as `torch.optim.SGD(nesterov=True)` (tests compare the two), but capturable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.data import to_input

__all__ = [
    "Step",
    "TensorLRSGD",
    "CAPTURE_LOCK",
    "autocast",
    "capture",
    "capture_forward",
    "device_batch",
    "make_step",
    "memory_format",
    "precision",
]

WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN/cuBLAS pick kernels)


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
    """uint8 (B, 28, 28) on the device -> float (B, 1, S, S) in the device's layout."""
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


@dataclass(frozen=True)
class Step:
    run: Callable[[torch.Tensor, float], torch.Tensor]  # (indices, lr) -> loss
    eager_steps: int  # calls before the graph replays (0 when eager)
    graph: torch.cuda.CUDAGraph | None  # captured at call eager_steps + 1 (CUDA only)


def make_step(
    model: nn.Module,
    opt: TensorLRSGD,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    image_size: int,
    batch_size: int,
    label_smoothing: float,
    cuda_graph: bool,
) -> Step:
    """A step: step.run(indices, lr) -> loss (a device tensor, valid until the next call).

    With cuda_graph, the first WARMUP_STEPS calls run eagerly on a side stream and the
    next call captures the graph (and runs it); later calls replay it.
    """
    device = train_x.device
    dtype = next(model.parameters()).dtype  # float32; float64 in the exactness tests
    static_idx = torch.zeros(batch_size, dtype=torch.long, device=device)

    def body() -> torch.Tensor:
        x = device_batch(train_x[static_idx], image_size, dtype)
        with autocast(device):
            loss = F.cross_entropy(model(x), train_y[static_idx], label_smoothing=label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    if not cuda_graph:

        def eager(idx: torch.Tensor, lr: float) -> torch.Tensor:
            static_idx.copy_(idx)
            opt.lr.fill_(lr)
            return body()

        return Step(eager, 0, None)

    graph = torch.cuda.CUDAGraph()  # its own private memory pool
    side = torch.cuda.Stream(device)
    state: dict[str, torch.Tensor] = {}
    calls = 0

    def graphed(idx: torch.Tensor, lr: float) -> torch.Tensor:
        nonlocal calls
        static_idx.copy_(idx)
        opt.lr.fill_(lr)
        calls += 1
        here = torch.cuda.current_stream(device)  # this trial's stream (nas.concurrent)
        if calls <= WARMUP_STEPS or "loss" not in state:
            side.wait_stream(here)
            with torch.cuda.stream(side):
                if calls <= WARMUP_STEPS:
                    loss = body()
                else:
                    opt.zero_grad()  # grads are allocated inside the graph's private pool
                    state["loss"] = capture(graph, body)
            here.wait_stream(side)
            if calls <= WARMUP_STEPS:
                return loss
        graph.replay()  # on this trial's stream; releases the GIL
        return state["loss"]

    return Step(graphed, WARMUP_STEPS, graph)


# One capture at a time in a process: a capture owns the allocator's routing to its pool
# and the CUDA generator's capture state. Trials beside it (nas.search --concurrency) go
# on replaying and allocating on their own streams, which "thread_local" capture mode
# allows; what would break a capture (a device-wide synchronize, emptying the cache) is
# never done by a trial, or only under this lock (see nas.concurrent.release_memory).
CAPTURE_LOCK = threading.Lock()


def capture(graph: torch.cuda.CUDAGraph, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Capture fn() into `graph` on the current (side) stream, under the capture lock, and
    return its output tensor. Unlike `torch.cuda.graph(...)` this neither synchronises the
    whole device nor empties the cache first, either of which would stall or break trials
    running beside this one. Capturing runs nothing: the caller replays the graph."""
    with CAPTURE_LOCK:
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            return fn()
        finally:
            graph.capture_end()  # after a failure in fn() this raises, chained to it


def capture_forward(
    forward: Callable[[], torch.Tensor], device: torch.device, warmup: int = 3
) -> torch.cuda.CUDAGraph:
    """forward() run eagerly `warmup` times on a side stream, then captured into a graph
    of its own, ready to replay on any stream."""
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream(device)
    here = torch.cuda.current_stream(device)
    side.wait_stream(here)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            forward()
        capture(graph, forward)
    here.wait_stream(side)
    return graph
