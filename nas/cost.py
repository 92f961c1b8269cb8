"""What an architecture costs: parameters and multiply-adds, measured and in closed form.
(What it costs to run, latency and memory, is nas.training.measure's; `nas.cost` prints both.)

fvcore's FlopCountAnalysis traces the eval-mode model at batch 1 and counts one fused
multiply-add as one "flop"; every number from it is labelled "MACs (fvcore)". It counts
convolutions, the linear layer, eval-mode batch norm (2 per element: scale and shift)
and the adaptive average pool (1 per input element), and ignores ReLU, max/avg pooling
and concatenation. `closed_form_macs` reproduces that count exactly from the config
alone, in microseconds and without building a model.

CLI: `python -m nas.cost CONFIG.json [--json]` (also accepts a `nas.export` file).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from nas.arch.config import ArchConfig, ConfigError
from nas.cli import UsageError, make_parser, run_cli

__all__ = [
    "Cost",
    "closed_form_macs",
    "closed_form_mmacs",
    "load_config_file",
    "main",
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


def load_config_file(path: str | Path) -> ArchConfig:
    """An architecture JSON, or a `nas.export` file (its "config" member)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UsageError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError, UnicodeDecodeError) as e:
        raise UsageError(f"{p} is not valid JSON: {e}") from None
    if isinstance(data, dict) and "config" in data and "schema" in data:
        data = data["config"]
    try:
        return ArchConfig.from_dict(data)
    except ConfigError as e:
        raise UsageError(f"{p}: {e}") from None


def _report(config: ArchConfig, cost: Cost, closed: dict[str, int], latency: dict) -> str:
    lines = [
        f"architecture   {config.describe()}  stem={config.stem}({config.stem_channels}) "
        f"input={config.in_channels}x{config.image_size}x{config.image_size}",
        f"params         {cost.params:,}",
        f"MACs (fvcore)  {cost.fvcore_macs:,}  ({cost.fvcore_macs / 1e6:,.1f} M; "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(cost.fvcore_by_operator.items()))
        + ")",
        f"MACs (closed)  {sum(closed.values()):,}  (closed form from the config)",
        f"fvcore time    {cost.fvcore_seconds * 1000:.0f} ms (build + trace)",
        f"CPU latency    {latency['value']:.3f} ms per image at batch 1, fp32, eval mode "
        f"(median of {latency['runs']} runs, quartiles {latency['spread']:.0%} apart; "
        f"{latency['device']})",
        "",
        "block  size   convs  channels in -> out  transition to",
    ]
    for b in config.plan():
        t = "-" if b.transition_channels is None else f"{b.transition_channels}"
        lines.append(
            f"{b.index:>5}  {b.size:>3}x{b.size:<3} {b.convs:>4}  {b.in_channels:>8} -> "
            f"{b.out_channels:<6} {t:>11}"
        )
    return "\n".join(lines)


def _run(argv: list[str] | None) -> int:
    parser = make_parser(
        "nas.cost",
        "Parameters, multiply-adds and CPU latency (batch 1, one thread) of a DenseNet "
        "architecture. fvcore counts one fused multiply-add as one flop, so its numbers are "
        "shown as MACs (fvcore). GPU latency and training memory are measured by nas.search "
        "on the GPU it trains on.",
    )
    parser.add_argument("config", help="architecture JSON (or a nas.export file)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)
    config = load_config_file(args.config)
    cost = measure_cost(config)
    closed = closed_form_macs(config)
    from nas.training.measure import cpu_latency

    latency = cpu_latency(config).to_dict()
    if args.json:
        out = {
            "config": config.to_dict(),
            **asdict(cost),
            "closed_form_macs": sum(closed.values()),
            "closed_form_by_operator": closed,
            "latency_cpu": latency,
            "plan": [asdict(b) for b in config.plan()],
        }
        print(json.dumps(out, indent=2))
    else:
        print(_report(config, cost, closed, latency))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.cost", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
