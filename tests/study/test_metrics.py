"""nas.study.metrics: the one table of objectives and costs, and cost limits as constraints."""

from __future__ import annotations

import pytest

from nas.study.metrics import (
    COSTS,
    METRICS,
    Limits,
    directions,
    limit_options,
    metric_names,
    parse_objectives,
)


def test_objectives_parse_to_accuracy_first() -> None:
    assert parse_objectives("accuracy,macs") == ("accuracy", "macs")
    assert parse_objectives(" latency-cpu , accuracy ") == ("accuracy", "latency-cpu")
    assert parse_objectives("params,accuracy,memory") == ("accuracy", "params", "memory")
    objectives = parse_objectives("accuracy,latency-gpu,params")
    assert directions(objectives) == ["maximize", "minimize", "minimize"]
    assert metric_names(objectives) == ["val_accuracy", "GPU latency (ms)", "params (M)"]
    assert metric_names(("accuracy", "macs")) == ["val_accuracy", "MMACs (fvcore)"]  # as before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("accuracy,flops", "unknown objective 'flops'"),
        ("accuracy", "two or three objectives, not 1"),
        ("accuracy,macs,params,memory", "two or three objectives, not 4"),
        ("macs,params", "must include accuracy"),
        ("accuracy,macs,macs", "named twice"),
    ],
)
def test_bad_objectives(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_objectives(text)


def test_limits_become_named_constraints_in_the_stored_units() -> None:
    assert Limits().checks() == [] and Limits().to_dict() == {}
    limits = Limits.of("gpu", mmacs=50, params=5e5, latency_ms=2.5, memory_mb=900)
    assert limits.checks() == [
        ("mmacs_over_budget", "macs", 50, 1.0),
        ("params_over_budget", "params", 5e5, 1e6),  # params are stored in millions
        ("latency_gpu_ms_over_budget", "latency_gpu", 2.5, 1.0),
        ("memory_mb_over_budget", "memory", 900, 1.0),
    ]
    assert limits.needs() == {"macs", "params", "latency_gpu", "memory"}
    assert limits.get("latency_gpu") == 2.5 and limits.get("latency_cpu") is None
    assert Limits.of(latency_ms=3).to_dict() == {"latency_ms": 3, "latency_device": "cpu"}
    assert Limits.of(params=10).to_dict() == {"params": 10}  # no latency: no latency device
    assert Limits.from_dict(limits.to_dict()) == limits  # as a study stores and reads them
    assert limits.describe() == (
        "MACs <= 50 MMACs (fvcore), params <= 500,000, GPU latency <= 2.5 ms, "
        "train memory <= 900 MB"
    )
    assert Limits().describe() == "none"
    costs = {"macs": {"value": 60.0}, "params": {"value": 0.4}, "latency_cpu": {"value": 9}}
    assert limits.excess(costs) == {"mmacs_over_budget": 10.0, "params_over_budget": -1e5}
    with pytest.raises(AssertionError, match="not a cost limit"):
        Limits.of(flops=1)


def test_every_cost_is_one_entry_of_the_table() -> None:
    """A cost key for every cost, none for accuracy; each limit's option once, and each
    option a limit of its own but the latency's, which --latency-device splits."""
    for name, m in METRICS.items():
        assert (m.key == "") == (name == "accuracy")
        assert COSTS.get(m.key, m) is m
    assert list(limit_options()) == [
        "--max-mmacs",
        "--max-params",
        "--max-latency-ms",
        "--max-memory-mb",
    ]
    limited = [m for m in COSTS.values() if m.limit is not None]
    assert len({m.limit.constraint for m in limited}) == len(limited)
    assert {m.limit.device for m in limited if m.limit.name == "latency_ms"} == {"cpu", "gpu"}
    assert "throughput-gpu" not in METRICS and "throughput_gpu" in COSTS  # measured beside
