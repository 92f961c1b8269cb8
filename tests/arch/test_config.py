"""nas.arch.config: validation, the channel plan, and the JSON round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.errors import ConfigError


def _valid(d: dict) -> bool:
    try:
        ArchConfig(**d)
    except ConfigError:
        return False
    return True


configs = (
    st.fixed_dictionaries(
        dict(
            growth_rate=st.integers(1, 64),
            convs_per_block=st.lists(st.integers(1, 12), min_size=1, max_size=3).map(tuple),
            compression=st.sampled_from([0.25, 0.3, 0.5, 0.7, 0.875, 1.0]),
            bottleneck=st.booleans(),
            stem=st.sampled_from(["d2l", "cifar"]),
            stem_channels=st.integers(1, 128),
            in_channels=st.integers(1, 3),
            image_size=st.integers(32, 128),
            num_classes=st.integers(2, 100),
        )
    )
    .filter(_valid)
    .map(lambda d: ArchConfig(**d))
)


@settings(max_examples=200, deadline=None)
@given(configs)
def test_json_round_trip(config: ArchConfig) -> None:
    again = ArchConfig.from_json(config.to_json())
    assert again == config
    assert json.loads(again.to_json()) == config.to_dict()


@settings(max_examples=200, deadline=None)
@given(configs)
def test_plan_channels_follow_the_paper(config: ArchConfig) -> None:
    plan = config.plan()
    assert plan[0].in_channels == config.stem_channels
    for a, b in zip(plan, plan[1:]):
        assert a.out_channels == a.in_channels + a.convs * config.growth_rate
        assert b.in_channels == a.transition_channels
        assert b.size == a.size // 2
    assert plan[-1].transition_channels is None


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.integers() | st.floats() | st.text() | st.none()))
def test_arbitrary_json_objects_are_rejected_or_valid(d: dict) -> None:
    try:
        config = ArchConfig.from_dict(d)
    except ConfigError:
        return
    assert ArchConfig.from_dict(config.to_dict()) == config


def test_d2l_chapter_plan() -> None:
    # d2l: 64 + 4*32 = 192 -> 96 -> 224 -> 112 -> 240 -> 120 -> 248 channels; 24,12,6,3 px
    plan = D2L_CHAPTER.plan()
    assert [(b.in_channels, b.out_channels, b.size) for b in plan] == [
        (64, 192, 24),
        (96, 224, 12),
        (112, 240, 6),
        (120, 248, 3),
    ]
    assert D2L_CHAPTER.final_channels == 248


def test_transition_floor_is_robust_to_rounding() -> None:
    c = ArchConfig(
        growth_rate=10,
        convs_per_block=(3, 1),
        compression=0.29,
        stem="cifar",
        stem_channels=70,
        image_size=28,
    )
    assert c.plan()[0].transition_channels == 29  # floor(0.29 * 100); naive float gives 28


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"growth_rate": 0}, "growth_rate must be in"),
        ({"growth_rate": 100000}, "growth_rate must be in"),
        ({"growth_rate": 3.5}, "growth_rate must be an integer"),
        ({"growth_rate": True}, "growth_rate must be an integer"),
        ({"convs_per_block": []}, "convs_per_block must have"),
        ({"convs_per_block": [4, -1]}, r"convs_per_block\[1\] must be in"),
        ({"convs_per_block": "4,4"}, "must be a list"),
        ({"compression": 0.0}, r"compression must be in \(0, 1\]"),
        ({"compression": 1.5}, r"compression must be in \(0, 1\]"),
        ({"compression": float("nan")}, r"compression must be in \(0, 1\]"),
        ({"compression": "half"}, "compression must be a number"),
        ({"stem": "resnet"}, "stem must be one of"),
        ({"bottleneck": "yes"}, "bottleneck must be true or false"),
        ({"image_size": 8}, "spatial size reaches 0"),
        ({"compression": 0.001, "growth_rate": 1, "stem_channels": 1}, "0 channels"),
    ],
)
def test_invalid_configs_are_rejected(change: dict, message: str) -> None:
    d = D2L_CHAPTER.to_dict() | change
    with pytest.raises(ConfigError, match=message):
        ArchConfig.from_dict(d)


def test_unknown_and_malformed_json() -> None:
    with pytest.raises(ConfigError, match="unknown architecture key"):
        ArchConfig.from_dict(D2L_CHAPTER.to_dict() | {"depth": 121})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ArchConfig.from_json("{growth_rate: 32")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        ArchConfig.from_json("[1, 2]")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ArchConfig.from_json("[" * 100_000)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        D2L_CHAPTER.growth_rate = 12  # type: ignore[misc]
