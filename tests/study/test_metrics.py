"""nas.study.metrics: the objectives a search can choose, and budgets as constraints."""

from __future__ import annotations

import pytest

from nas.study.metrics import (
    METRICS,
    Limits,
    describe_limits,
    directions,
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
    limits = Limits(params=5e5, latency_ms=2.5, latency_device="gpu", memory_mb=900)
    assert limits.checks() == [
        ("params_over_budget", "params", 5e5, 1e6),  # params are stored in millions
        ("latency_gpu_ms_over_budget", "latency_gpu", 2.5, 1.0),
        ("memory_mb_over_budget", "memory", 900, 1.0),
    ]
    assert limits.needs() == {"params", "latency_gpu", "memory"}
    assert Limits(latency_ms=3).to_dict() == {"latency_ms": 3, "latency_device": "cpu"}
    assert Limits(params=10).to_dict() == {"params": 10}  # no latency: no latency device
    text = describe_limits(50, limits.to_dict())
    assert text == (
        "MACs <= 50 MMACs (fvcore), params <= 500,000, GPU latency <= 2.5 ms, "
        "train memory <= 900 MB"
    )
    assert describe_limits(None, {}) == "none"
    for name, m in METRICS.items():  # a cost key for every cost, none for accuracy
        assert (m.key == "") == (name == "accuracy")
