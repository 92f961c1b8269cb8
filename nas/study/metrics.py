"""What a trial is scored on and limited by: the one table of objectives and costs.

A search optimises validation accuracy against one or two costs (`--objectives`, default
`accuracy,macs`). Accuracy is always the first objective (maximised); the costs follow
in the order given (minimised). Every cost is one entry of METRICS: its names on the
command line, in Optuna, in a trial's record and in the report, its unit, how it is
measured, and its cost limit (`--max-*`, a CostLimit); everything else (the options of
nas.search, the constraints, the picks of nas.export, the report's columns and axes, a
trial's line) is derived from it. Adding a cost is one entry here plus its measurement
(nas.study.objective).

Cost limits are Optuna constraints: a trial over one is infeasible, kept off the front
and never exported, and where the cost is known before training (MACs, parameters, CPU
latency, GPU latency) it is not trained at all. (The train budget, how long a trial
trains, is nas.training.budget's.) This module imports no torch: it is the vocabulary
shared by search, report and export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COSTS",
    "DEFAULT_OBJECTIVES",
    "LIMIT_NAMES",
    "METRICS",
    "CostLimit",
    "Limits",
    "Metric",
    "SHIPPED_KEYS",
    "directions",
    "judged_value",
    "limit_options",
    "metric_names",
    "parse_objectives",
]


@dataclass(frozen=True)
class CostLimit:
    """A cost's limit: `--max-*` on nas.search, a constraint on every trial."""

    name: str  # its key in a study's stored limits (nas.study.record)
    option: str  # the nas.search option; its pick on nas.export is "max-...=N"
    metavar: str
    help: str  # the option's help
    unit: str  # the limit's unit
    scale: float  # a stored cost x scale = the same in the limit's unit
    words: str  # "over the MAC budget"
    text: str  # the limit in words, formatted with its value
    constraint: str  # the Optuna constraint's name, stored with each trial
    device: str = ""  # a latency's limit: the --latency-device it is for


@dataclass(frozen=True)
class Metric:
    name: str  # as on the command line (--objectives)
    label: str  # the Optuna metric name, shown by optuna-dashboard and the report
    unit: str
    key: str  # its entry in a trial's `costs` (nas.study.record); "" for accuracy
    before_training: bool  # measured before training: a limit on it skips training
    gpu: bool  # measured on the training GPU only
    how: str  # how it is measured, for the report
    brief: str  # the same for nas.search --help
    column: str = ""  # the report table's column (default: label)
    axis: str = ""  # the report's axis title
    shown: str = ""  # in a trial's line, formatted with its value ("": not shown)
    objective: bool = True  # may be an objective (else measured beside another)
    limit: CostLimit | None = None

    @property
    def col(self) -> str:
        return self.column or self.label


_ROWS = (
    Metric(
        "accuracy",
        "val_accuracy",
        "fraction correct",
        "",
        False,
        False,
        "validation accuracy on the data's fixed validation split (maximised)",
        "validation accuracy on the data's fixed validation split (maximised)",
    ),
    Metric(
        "macs",
        "MMACs (fvcore)",
        "millions of multiply-adds",
        "macs",
        True,
        False,
        "multiply-adds at batch 1 as fvcore counts them (one fused multiply-add = 1)",
        "MACs (fvcore) in millions at batch 1; fvcore counts one multiply-add as one flop, "
        "so --max-mmacs is in those units too (1 MAC = 2 FLOPs)",
        axis="MACs (fvcore), millions, batch 1",
        shown="{:,.1f} MMACs (fvcore)",
        limit=CostLimit(
            "mmacs",
            "--max-mmacs",
            "M",
            "budget in millions of multiply-adds at batch 1, as fvcore counts them (MACs, "
            "not FLOPs: 1 MAC = 2 FLOPs); larger networks are infeasible, not trained",
            "MMACs (fvcore)",
            1.0,
            "MAC",
            "MACs <= {:g} MMACs (fvcore)",
            "mmacs_over_budget",
        ),
    ),
    Metric(
        "params",
        "params (M)",
        "millions of parameters",
        "params",
        True,
        False,
        "trainable parameters, in millions",
        "parameters, in millions",
        column="params",  # counted, not in millions
        axis="parameters",
        shown="{:.2f} M params",
        limit=CostLimit(
            "params",
            "--max-params",
            "N",
            "budget in parameters (e.g. 500000); larger networks are infeasible, not trained",
            "parameters",
            1e6,  # stored in millions
            "parameter",
            "params <= {:,.0f}",
            "params_over_budget",
        ),
    ),
    Metric(
        "latency-cpu",
        "CPU latency (ms)",
        "ms per image",
        "latency_cpu",
        True,
        False,
        "inference at batch 1 on one CPU thread, fp32, eval mode: median of up to 21 timed "
        "runs after 3 untimed ones",
        "ms per image at batch 1 on one CPU thread, fp32 (median of up to 21 runs)",
        axis="CPU latency, ms per image, batch 1, one thread",
        shown="CPU {:.2f} ms",
        limit=CostLimit(
            "latency_ms",
            "--max-latency-ms",
            "MS",
            "budget in ms per image at batch 1, on the device --latency-device names; slower "
            "networks are infeasible, not trained",
            "ms",
            1.0,
            "CPU latency",
            "CPU latency <= {:g} ms",
            "latency_cpu_ms_over_budget",
            device="cpu",
        ),
    ),
    Metric(
        "latency-gpu",
        "GPU latency (ms)",
        "ms per image",
        "latency_gpu",
        True,
        True,
        "inference at batch 1 on the training GPU, bf16, replayed as a CUDA graph, timed "
        "with CUDA events: median of 50 replays after 10 untimed ones",
        "ms per image at batch 1 on the training GPU, bf16, CUDA graph (median of 50 "
        "replays; needs the GPU to one trial: --concurrency 1, --workers 1)",
        axis="GPU latency, ms per image, batch 1",
        shown="GPU {:.3f} ms",
        limit=CostLimit(
            "latency_ms",
            "--max-latency-ms",
            "MS",
            "",  # the CPU's entry says it
            "ms",
            1.0,
            "GPU latency",
            "GPU latency <= {:g} ms",
            "latency_gpu_ms_over_budget",
            device="gpu",
        ),
    ),
    Metric(
        "memory",
        "train memory (MB)",
        "MB (10^6 bytes)",
        "memory",
        False,
        True,
        "GPU memory of one training step at the budget's batch size: weights, momentum "
        "and the step's CUDA-graph memory pool (activations, gradients)",
        "MB of GPU memory of one training step at the budget's batch size",
        axis="GPU memory of a training step, MB",
        shown="train memory {:,.0f} MB",
        limit=CostLimit(
            "memory_mb",
            "--max-memory-mb",
            "MB",
            "budget in MB of GPU memory for one training step (GPU only); known after "
            "training, so a network over it is trained, then marked infeasible",
            "MB",
            1.0,
            "memory",
            "train memory <= {:g} MB",
            "memory_mb_over_budget",
        ),
    ),
    Metric(
        "throughput-gpu",
        "GPU throughput (img/s)",
        "images per second",
        "throughput_gpu",
        True,
        True,
        "inference at batch 1024 on the training GPU, bf16, CUDA graph (measured beside "
        "GPU latency)",
        "",
        objective=False,
    ),
)
METRICS: dict[str, Metric] = {m.name: m for m in _ROWS if m.objective}  # the objectives
COSTS: dict[str, Metric] = {m.key: m for m in _ROWS if m.key}  # every measured cost, by key
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


def limit_options() -> dict[str, CostLimit]:
    """Each `--max-*` option of nas.search, once (both latencies share one)."""
    out: dict[str, CostLimit] = {}
    for m in COSTS.values():
        if m.limit is not None:
            out.setdefault(m.limit.option, m.limit)
    return out


# every cost limit's name in a study's stored limits (latency_ms is the CPU's or the GPU's)
LIMIT_NAMES = tuple(dict.fromkeys(m.limit.name for m in COSTS.values() if m.limit is not None))

# A cost whose as-shipped figure, where a trial measured it, is what its limit judges: the
# CPU latency of the network's AOTInductor package (nas.deploy), timed for a network the
# eager stand-in put over a CPU latency budget (nas.study.objective).
SHIPPED_KEYS = {"latency_cpu": "latency_cpu_shipped"}


def judged_value(costs: dict[str, dict], key: str) -> float | None:
    """The figure of cost `key` a limit judges: the as-shipped one where measured, else
    the stored one; None if neither was measured."""
    entry = costs.get(SHIPPED_KEYS.get(key, "")) or costs.get(key)
    return None if entry is None else entry["value"]


@dataclass(frozen=True)
class Limits:
    """A study's cost limits (`--max-*`): CostLimit name -> the most a cost may be, in the
    limit's unit; the latency limit is the CPU's or the GPU's (`latency_device`)."""

    values: dict[str, float] = field(default_factory=dict)
    latency_device: str = "cpu"  # "cpu" or "gpu"

    def __hash__(self) -> int:  # frozen, but a dict inside: hashed by its items
        return hash((tuple(sorted(self.values.items())), self.latency_device))

    @classmethod
    def of(cls, latency_device: str = "cpu", **values: float | None) -> Limits:
        """Limits.of(mmacs=50, params=None, ...): the limits that are set."""
        names = {m.limit.name for m in COSTS.values() if m.limit is not None}
        unknown = set(values) - names
        assert not unknown, f"not a cost limit: {sorted(unknown)}"
        return cls({k: v for k, v in values.items() if v is not None}, latency_device)

    def metrics(self) -> list[Metric]:
        """The costs these limits bound, in the table's order."""
        return [
            m
            for m in COSTS.values()
            if m.limit is not None
            and m.limit.name in self.values
            and m.limit.device in ("", self.latency_device)
        ]

    def get(self, key: str) -> float | None:
        """The limit on cost `key` (in the limit's unit), or None."""
        m = COSTS[key]
        return self.values[m.limit.name] if m in self.metrics() and m.limit else None

    def to_dict(self) -> dict[str, Any]:
        """As a study stores it: only the limits that are set (none: {}), and the latency
        device where a latency is limited."""
        d: dict[str, Any] = dict(self.values)
        if any(m.limit and m.limit.device for m in self.metrics()):
            d["latency_device"] = self.latency_device
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Limits:
        d = dict(d or {})
        return cls.of(d.pop("latency_device", "cpu"), **d)

    def checks(self) -> list[tuple[str, str, float, float]]:
        """(constraint name, cost key, limit, scale of the stored cost to the limit's unit)."""
        return [
            (m.limit.constraint, m.key, self.values[m.limit.name], m.limit.scale)
            for m in self.metrics()
            if m.limit is not None
        ]

    def needs(self) -> set[str]:
        """Cost keys these limits need measured."""
        return {key for _, key, _, _ in self.checks()}

    def excess(self, costs: dict[str, dict]) -> dict[str, float]:
        """Each limit's constraint value for these measured costs (> 0: over it), for the
        limits whose cost was measured: what a trial stores with trial.set_constraint, and
        what report and export recompute when a study's limits change."""
        return {
            name: judged_value(costs, key) * scale - limit
            for name, key, limit, scale in self.checks()
            if key in costs
        }

    def describe(self) -> str:
        """In words: "MACs <= 50 MMACs (fvcore), params <= 500,000" or "none"."""
        words = [
            m.limit.text.format(self.values[m.limit.name])
            for m in self.metrics()
            if m.limit is not None
        ]
        return ", ".join(words) or "none"
