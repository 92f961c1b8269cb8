"""What an architecture costs, counted without running it: parameters and multiply-adds.
(What it costs to run, latency and memory, is nas.training.measure's.)

fvcore's FlopCountAnalysis traces the eval-mode model at batch 1 and counts one fused
multiply-add as one "flop"; every number from it is labelled "MACs (fvcore)". It counts
convolutions, the linear layer, eval-mode batch norm (2 per element: scale and shift)
and the adaptive average pool (1 per input element), and ignores ReLU, max/avg pooling
and concatenation. `closed_form_macs` reproduces that count exactly from the config
alone, in microseconds and without building a model.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass

from nas.arch.config import ArchConfig

__all__ = [
    "Cost",
    "closed_form_macs",
    "closed_form_mmacs",
    "measure_cost",
]


@dataclass(frozen=True)
class Cost:
    params: int
    fvcore_macs: int  # all ops fvcore counts, batch 1 ("MACs (fvcore)")
    fvcore_by_operator: dict[str, int]  # conv, linear, batch_norm, adaptive_avg_pool2d
    fvcore_seconds: float  # wall time of building the model and tracing it


def closed_form_macs(config: ArchConfig) -> dict[str, int]:
    """fvcore's count per operator, from the config alone (batch 1, eval mode)."""
    conv = bn = 0
    cin, size = config.in_channels, config.image_size
    c0 = config.stem_channels
    if config.stem == "d2l":
        s = (size - 1) // 2 + 1
        conv += s * s * c0 * cin * 7 * 7
        bn += 2 * c0 * s * s
    else:
        conv += size * size * c0 * cin * 3 * 3
    k = config.growth_rate
    for block in config.plan():
        area = block.size * block.size
        for i in range(block.convs):
            c = block.in_channels + i * k
            bn += 2 * c * area
            if config.bottleneck:
                conv += area * 4 * k * c  # 1x1 to 4k
                bn += 2 * 4 * k * area
                conv += area * k * 4 * k * 9  # 3x3 to k
            else:
                conv += area * k * c * 9
        if block.transition_channels is not None:
            bn += 2 * block.out_channels * area
            conv += area * block.transition_channels * block.out_channels
    last = config.plan()[-1]
    area = last.size * last.size
    bn += 2 * last.out_channels * area
    return {
        "conv": conv,
        "batch_norm": bn,
        "adaptive_avg_pool2d": last.out_channels * area,
        "linear": last.out_channels * config.num_classes,
    }


def closed_form_mmacs(config: ArchConfig) -> float:
    """All of fvcore's count for this config, in millions ("MMACs (fvcore)")."""
    return sum(closed_form_macs(config).values()) / 1e6


# fvcore traces through torch.jit and the warning filters are process-wide: one count at
# a time (trials run side by side with nas.search --concurrency).
_TRACE_LOCK = threading.Lock()


def measure_cost(config: ArchConfig) -> Cost:
    """Build the model on the CPU and count it with fvcore at batch 1 (thread-safe)."""
    with _TRACE_LOCK:
        return _measure_cost(config)


def _measure_cost(config: ArchConfig) -> Cost:
    import torch

    from nas.arch.model import build_model, count_params

    # fvcore's helpers use torch.jit.script, deprecated (DeprecationWarning in torch 2.13,
    # FutureWarning in others): library noise, not the user's business
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    t0 = time.perf_counter()
    model = build_model(config).eval()
    x = torch.zeros(1, config.in_channels, config.image_size, config.image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        flops = FlopCountAnalysis(model, x)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = {name: int(v) for name, v in flops.by_operator().items()}
        total = int(flops.total())
    return Cost(count_params(model), total, by_op, time.perf_counter() - t0)
