"""nas.training.step: the capturable SGD equals torch.optim.SGD; the graphed step equals the
eager one.

Tolerances. In float64 our step and torch's compute the same sums in a slightly
different order (`p - lr*g` against `p + (-lr)*g`), so six steps of training agree to
6.6e-15 relative (losses, weights and BN statistics); the bugs these tests exist for
move them by 1.5e-2 (weight decay dropped), 0.52 (Nesterov off) and 0.56 (the LR frozen
at capture) in the same run. A tolerance of 1e-10 sits between the two, and
`test_the_tolerance_catches_each_bug` runs each bug through the same comparison to show
that it fails. float32 cannot make that cut over several steps (its rounding grows
through training to ~1e-5, the size of a weight-decay slip), so in float32 only one step
on identical gradients is compared, to a few units in the last place.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import EmulatedGraph, small_config
from nas.arch.model import build_model
from nas.data.dataset import to_input
from nas.training import gpu
from nas.training.step import WARMUP_STEPS, TensorLRSGD, make_step

SMALL = small_config(image_size=32)
LRS = [0.05, 0.1, 0.1, 0.07, 0.02, 0.0]  # changes at every replay on CUDA (steps 4-6)
MOMENTUM, WD = 0.9, 5e-4
REL = 1e-10  # see the module docstring: 6.6e-15 real difference, >= 1.5e-2 for a bug


def batches(n: int, bs: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    order = [torch.arange(i * bs, (i + 1) * bs, device=device) for i in range(len(LRS))]
    return x, y, order


def fresh_model(device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SMALL).to(device=device, dtype=dtype)


def torch_sgd_run(lrs: list[float], weight_decay: float = WD, nesterov: bool = True):
    """Six steps with torch.optim.SGD in float64: losses and the trained model."""
    x, y, order = batches(96, 16)
    model = fresh_model(dtype=torch.float64)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=MOMENTUM, nesterov=nesterov, weight_decay=weight_decay
    )
    losses = []
    for idx, lr in zip(order, lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(to_input(x[idx], 32, torch.float64)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model


def our_run(runner: EmulatedGraph | None = None, mode: list[str] | None = None):
    """The same six steps through nas.training.step in float64: eager on the CPU, or through the
    graphed step's control flow with `runner` standing in for the CUDA graph."""
    x, y, order = batches(96, 16)
    model = fresh_model(dtype=torch.float64)
    opt = TensorLRSGD(list(model.parameters()), momentum=MOMENTUM, weight_decay=WD, nesterov=True)
    step = make_step(
        model,
        opt,
        x,
        y,
        image_size=32,
        batch_size=16,
        cuda_graph=runner is not None,
        runner=runner,
    )
    losses = [step.run(idx, lr).item() for idx, lr in zip(order, LRS)]
    if mode is not None:
        mode.append(step.mode)
    return losses, model


def max_rel_difference(a, b) -> float:
    """Largest relative difference over the losses, the weights and the BN statistics."""
    (la, ma), (lb, mb) = a, b
    worst = max(abs(p - q) / abs(q) for p, q in zip(la, lb))
    for p, q in zip([*ma.parameters(), *ma.buffers()], [*mb.parameters(), *mb.buffers()]):
        if p.is_floating_point():
            scale = q.abs().max().clamp_min(1e-300)
            worst = max(worst, ((p - q).abs().max() / scale).item())
    return worst


@pytest.fixture(scope="module")
def ours():
    return our_run()


def test_fast_step_matches_plain_torch_sgd_in_float64(ours) -> None:
    assert max_rel_difference(ours, torch_sgd_run(LRS)) < REL


@pytest.mark.parametrize(
    "bug",
    [
        {"weight_decay": 0.0},  # weight decay dropped
        {"nesterov": False},  # plain momentum instead of Nesterov
        {"lrs": [*LRS[:4], LRS[3], LRS[3]]},  # LR frozen at the value of capture (step 4)
    ],
    ids=["weight-decay-dropped", "nesterov-off", "lr-frozen-at-capture"],
)
def test_the_tolerance_catches_each_bug(ours, bug: dict) -> None:
    bug = dict(bug)  # the parametrize table is shared: pop from a copy
    lrs = bug.pop("lrs", LRS)
    difference = max_rel_difference(ours, torch_sgd_run(lrs, **bug))
    assert difference > 1e3 * REL, difference  # each bug is far outside the tolerance


def test_one_float32_step_on_identical_gradients() -> None:
    torch.manual_seed(0)
    ref_model, our_model = fresh_model(), fresh_model()
    for p, q in zip(ref_model.parameters(), our_model.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    torch.optim.SGD(
        ref_model.parameters(), lr=0.1, momentum=MOMENTUM, nesterov=True, weight_decay=WD
    ).step()
    ours = TensorLRSGD(list(our_model.parameters()), MOMENTUM, WD, nesterov=True)
    ours.lr.fill_(0.1)
    ours.step()
    eps = torch.finfo(torch.float32).eps
    for p, q in zip(ref_model.parameters(), our_model.parameters()):
        # a few roundings apart; a weight-decay slip alone is lr * wd * |p| ~ 5e-5 |p|
        torch.testing.assert_close(q, p, rtol=4 * eps, atol=4 * eps * p.abs().max().item())


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False)])
def test_other_sgd_variants_match(momentum: float, nesterov: bool) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    v = torch.nn.Parameter(w.detach().clone())
    ref = torch.optim.SGD([w], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=0.01)
    ours = TensorLRSGD([v], momentum=momentum, weight_decay=0.01, nesterov=nesterov)
    ours.lr.fill_(0.1)
    for i in range(4):
        for p, opt in ((w, ref), (v, ours)):
            opt.zero_grad()
            ((p - i) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(w, v, rtol=1e-14, atol=1e-14)


# -- the graphed step's control flow on the CPU (EmulatedGraph stands in for the graph) ------


@pytest.fixture
def graphs_on(monkeypatch):
    """This process's graph policy as at start, whatever a test turns off."""
    monkeypatch.setattr(gpu.GRAPHS, "off", None)
    return gpu.GRAPHS


def test_graphed_steps_equal_eager_steps_exactly(ours, graphs_on) -> None:
    graph, mode = EmulatedGraph(), []
    assert max_rel_difference(our_run(graph, mode), ours) == 0.0
    assert mode == ["cuda-graph"]
    replays = len(LRS) - WARMUP_STEPS  # the capturing call replays too
    assert graph.events == ["warmup"] * WARMUP_STEPS + ["capture"] + ["replay"] * replays


def test_a_failed_capture_goes_on_eagerly_from_the_same_state(ours, graphs_on) -> None:
    """Not memory: the trial goes on eagerly with the same numbers, says why, and this
    process makes no more graphs."""
    error = RuntimeError("operation not permitted when stream is capturing")
    graph, mode = EmulatedGraph(fail=[error]), []
    assert max_rel_difference(our_run(graph, mode), ours) == 0.0
    assert mode == [f"eager: capture failed: RuntimeError: {error}"]
    assert "replay" not in graph.events
    assert graphs_on.off == f"capture failed: RuntimeError: {error}"
    later, mode = EmulatedGraph(), []
    assert max_rel_difference(our_run(later, mode), ours) == 0.0
    assert later.events == [] and mode == [f"eager: {graphs_on.off}"]


def test_a_capture_out_of_memory_is_retried_once_then_raised(ours, graphs_on) -> None:
    def oom() -> torch.OutOfMemoryError:
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    graph, mode = EmulatedGraph(fail=[oom()]), []
    assert max_rel_difference(our_run(graph, mode), ours) == 0.0
    assert mode == ["cuda-graph"] and graph.events.count("capture") == 2
    with pytest.raises(torch.OutOfMemoryError):
        our_run(EmulatedGraph(fail=[oom(), oom()]))
    assert graphs_on.off is None  # memory is the trial's failure, not the graphs'


@pytest.mark.cuda
def test_cuda_graph_step_matches_eager() -> None:
    """With cuDNN's deterministic algorithms, replays run the same kernels on the same
    inputs as the eager steps: the losses are bit-identical (the tolerance is 0 because
    nothing is left to differ; without determinism, conv backward may sum in another
    order). An LR frozen at capture moves them by ~7e-3, Nesterov off by ~1.3e-2."""
    x, y, order = batches(96, 16, "cuda")
    losses = {}
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        for graph in (False, True):
            model = fresh_model("cuda").to(memory_format=torch.channels_last)
            opt = TensorLRSGD(list(model.parameters()), MOMENTUM, WD, True)
            step = make_step(model, opt, x, y, image_size=32, batch_size=16, cuda_graph=graph)
            losses[graph] = [step.run(idx, lr).item() for idx, lr in zip(order, LRS)]
            assert step.mode == ("cuda-graph" if graph else "eager")
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    assert len(LRS) > WARMUP_STEPS + 1  # some steps were replays
    assert losses[True] == losses[False]
