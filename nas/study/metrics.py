"""What a trial is scored on: the objectives a search can choose, their units, and budgets.

A search optimises validation accuracy against one or two costs (`--objectives`, default
`accuracy,macs`). Accuracy is always the first objective (maximised); the costs follow
in the order given (minimised). Budgets (`--max-*`) are Optuna constraints: a trial over
one is infeasible, kept off the front and never exported, and where the cost is known
before training (MACs, parameters, CPU latency, GPU latency) it is not trained at all.
This module imports no torch: it is the vocabulary shared by search, report and export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "BUDGET_OPTIONS",
    "DEFAULT_OBJECTIVES",
    "METRICS",
    "Limits",
    "Metric",
    "budget_checks",
    "budget_excess",
    "describe_limits",
    "directions",
    "metric_names",
    "parse_objectives",
]


@dataclass(frozen=True)
class Metric:
    name: str  # as on the command line
    label: str  # the Optuna metric name, shown by optuna-dashboard and the report
    unit: str
    key: str  # its entry in a trial's `costs` user attribute ("" for accuracy)
    before_training: bool  # measured before training: a budget on it skips training
    gpu: bool  # measured on the training GPU only
    how: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "accuracy",
            "val_accuracy",
            "fraction correct",
            "",
            False,
            False,
            "validation accuracy on a fixed 10k split of the training set (maximised)",
        ),
        Metric(
            "macs",
            "MMACs (fvcore)",
            "millions of multiply-adds",
            "macs",
            True,
            False,
            "multiply-adds at batch 1 as fvcore counts them (one fused multiply-add = 1)",
        ),
        Metric(
            "params",
            "params (M)",
            "millions of parameters",
            "params",
            True,
            False,
            "trainable parameters, in millions",
        ),
        Metric(
            "latency-cpu",
            "CPU latency (ms)",
            "ms per image",
            "latency_cpu",
            True,
            False,
            "inference at batch 1 on one CPU thread, fp32, eval mode: median of up to 21 "
            "timed runs after 3 untimed ones",
        ),
        Metric(
            "latency-gpu",
            "GPU latency (ms)",
            "ms per image",
            "latency_gpu",
            True,
            True,
            "inference at batch 1 on the training GPU, bf16, replayed as a CUDA graph, "
            "timed with CUDA events: median of 50 replays after 10 untimed ones",
        ),
        Metric(
            "memory",
            "train memory (MB)",
            "MB (10^6 bytes)",
            "memory",
            False,
            True,
            "GPU memory of one training step at the budget's batch size: weights, "
            "momentum and the step's CUDA-graph memory pool (activations, gradients)",
        ),
    )
}
DEFAULT_OBJECTIVES = ("accuracy", "macs")


def parse_objectives(text: str) -> tuple[str, ...]:
    """'accuracy,latency-cpu' -> ('accuracy', 'latency-cpu'); ValueError says what is wrong."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in METRICS:
            raise ValueError(f"unknown objective {n!r}; choose from {', '.join(METRICS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"an objective is named twice in {text!r}")
    if not 2 <= len(names) <= 3:
        raise ValueError(f"choose two or three objectives, not {len(names)} ({text!r})")
    if "accuracy" not in names:
        raise ValueError(
            f"the objectives must include accuracy ({text!r} has none): the search is for "
            "accurate networks at a cost"
        )
    return ("accuracy", *(n for n in names if n != "accuracy"))


def metric_names(objectives: tuple[str, ...]) -> list[str]:
    return [METRICS[n].label for n in objectives]


def directions(objectives: tuple[str, ...]) -> list[str]:
    return ["maximize" if n == "accuracy" else "minimize" for n in objectives]


@dataclass(frozen=True)
class Limits:
    """Budgets beside the MAC budget (`--max-mmacs`, kept apart for older studies)."""

    params: float | None = None  # parameters (a count)
    latency_ms: float | None = None  # ms per image at batch 1, on latency_device
    latency_device: str = "cpu"  # "cpu" or "gpu"
    memory_mb: float | None = None  # MB (10^6 bytes) of GPU memory for a training step

    def to_dict(self) -> dict[str, Any]:
        """Only the budgets that are set (a study without any records {})."""
        d = {k: v for k, v in asdict(self).items() if v is not None}
        if self.latency_ms is None:
            d.pop("latency_device")
        return d

    def checks(self) -> list[tuple[str, str, float, float]]:
        """(constraint name, cost key, limit, scale of the stored cost to the limit's unit)."""
        out = []
        if self.params is not None:
            out.append(("params_over_budget", "params", self.params, 1e6))  # stored in M
        if self.latency_ms is not None:
            key = f"latency_{self.latency_device}"
            out.append((f"{key}_ms_over_budget", key, self.latency_ms, 1.0))
        if self.memory_mb is not None:
            out.append(("memory_mb_over_budget", "memory", self.memory_mb, 1.0))
        return out

    def needs(self) -> set[str]:
        """Cost keys these budgets need measured."""
        return {key for _, key, _, _ in self.checks()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Limits:
        return cls(**(d or {}))


# each budget's constraint name -> (the search option that sets it, its unit)
BUDGET_OPTIONS = {
    "mmacs_over_budget": ("--max-mmacs", "MMACs (fvcore)"),
    "params_over_budget": ("--max-params", "parameters"),
    "latency_cpu_ms_over_budget": ("--max-latency-ms (CPU)", "ms"),
    "latency_gpu_ms_over_budget": ("--max-latency-ms (GPU)", "ms"),
    "memory_mb_over_budget": ("--max-memory-mb", "MB"),
}


def budget_checks(max_mmacs: float | None, limits: Limits) -> list[tuple[str, str, float, float]]:
    """Every budget of a study as (constraint name, cost key, limit, scale of the stored
    cost to the limit's unit), the MAC budget first."""
    macs = [] if max_mmacs is None else [("mmacs_over_budget", "macs", max_mmacs, 1.0)]
    return [*macs, *limits.checks()]


def budget_excess(
    costs: dict[str, dict], max_mmacs: float | None, limits: Limits
) -> dict[str, float]:
    """Each budget's constraint value for these measured costs (> 0: over it), for the
    budgets whose cost was measured: what a trial stores with trial.set_constraint, and
    what report and export recompute when a study's budgets change."""
    return {
        name: costs[key]["value"] * scale - limit
        for name, key, limit, scale in budget_checks(max_mmacs, limits)
        if key in costs
    }


def describe_limits(max_mmacs: float | None, limits: dict[str, Any]) -> str:
    """A study's budgets in words: "MACs <= 50 MMACs (fvcore), params <= 500,000" or "none"."""
    words = []
    if max_mmacs is not None:
        words.append(f"MACs <= {max_mmacs:g} MMACs (fvcore)")
    if limits.get("params") is not None:
        words.append(f"params <= {limits['params']:,.0f}")
    if limits.get("latency_ms") is not None:
        words.append(
            f"{limits.get('latency_device', 'cpu').upper()} latency <= {limits['latency_ms']:g} ms"
        )
    if limits.get("memory_mb") is not None:
        words.append(f"train memory <= {limits['memory_mb']:g} MB")
    return ", ".join(words) or "none"
