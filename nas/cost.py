"""`python -m nas.cost CONFIG.json [--json]`: what an architecture costs, counted and
measured here: parameters and MACs (fvcore, nas.arch.macs, with the closed form beside
them) and CPU latency (nas.training.measure). Accepts a `nas.export` file too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from nas.arch.config import ArchConfig, load_config_file
from nas.arch.macs import Cost, closed_form_macs, measure_cost
from nas.cli import make_parser, run_cli

__all__ = [
    "main",
]


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
