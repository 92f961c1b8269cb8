"""nas.step: the capturable SGD equals torch.optim.SGD; the graphed step equals the eager one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import small_config
from nas.data import to_input
from nas.model import build_model
from nas.step import WARMUP_STEPS, TensorLRSGD, make_step

SMALL = small_config(image_size=32)
LRS = [0.05, 0.1, 0.1, 0.07, 0.02, 0.0]


def batches(n: int, bs: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    order = [torch.arange(i * bs, (i + 1) * bs, device=device) for i in range(len(LRS))]
    return x, y, order


def fresh_model(device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SMALL).to(device)


def test_fast_step_matches_plain_torch_sgd_on_cpu() -> None:
    x, y, order = batches(96, 16)
    plain = fresh_model()
    ref_opt = torch.optim.SGD(
        plain.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    plain_losses = []
    for idx, lr in zip(order, LRS):
        for group in ref_opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(plain(to_input(x[idx], 32, torch.float32)), y[idx])
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        plain_losses.append(loss.item())

    fast = fresh_model()
    opt = TensorLRSGD(list(fast.parameters()), momentum=0.9, weight_decay=5e-4, nesterov=True)
    step, _ = make_step(fast, opt, x, y, 32, 16, 0.0, cuda_graph=False)
    fast_losses = [step(idx, lr).item() for idx, lr in zip(order, LRS)]

    # Same math; float32 rounding (~3e-8 after step 1) grows through six steps of training
    # on random labels to ~1e-4, far below any real difference (an LR or momentum slip
    # moves the weights by ~1e-2).
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5)
    for p, q in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-3)
    for a, b in zip(plain.buffers(), fast.buffers()):  # BN running statistics too
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False)])
def test_other_sgd_variants_match(momentum: float, nesterov: bool) -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    v = torch.nn.Parameter(w.detach().clone())
    ref = torch.optim.SGD([w], lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=0.01)
    ours = TensorLRSGD([v], momentum=momentum, weight_decay=0.01, nesterov=nesterov)
    ours.lr.fill_(0.1)
    for i in range(4):
        for p, opt in ((w, ref), (v, ours)):
            opt.zero_grad()
            ((p - i) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(w, v)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_eager() -> None:
    x, y, order = batches(96, 16, "cuda")
    losses = {}
    for graph in (False, True):
        model = fresh_model("cuda").to(memory_format=torch.channels_last)
        opt = TensorLRSGD(list(model.parameters()), 0.9, 5e-4, True)
        step, _ = make_step(model, opt, x, y, 32, 16, 0.0, cuda_graph=graph)
        losses[graph] = [step(idx, lr).item() for idx, lr in zip(order, LRS)]
    assert len(LRS) > WARMUP_STEPS + 1  # some steps were replays
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
