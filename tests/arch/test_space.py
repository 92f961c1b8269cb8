"""nas.arch.space: sampling through FixedTrial, presets, overrides, and the parsers."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.arch.macs import closed_form_mmacs
from nas.arch.space import (
    PRESETS,
    load_space_file,
    params_of,
    parse_range,
    reference_params,
    sample,
)
from nas.errors import ConfigError


def test_fixed_trial_replays_the_d2l_chapter() -> None:
    params = reference_params(PRESETS["d2l"])
    assert params == {
        "growth_rate": 32,
        "convs_per_block_1": 4,
        "convs_per_block_2": 4,
        "convs_per_block_3": 4,
        "convs_per_block_4": 4,
        "compression": 0.5,
    }
    assert sample(optuna.trial.FixedTrial(params), PRESETS["d2l"]) == D2L_CHAPTER


def test_cifar_preset_has_no_d2l_reference_and_uses_2k_stem() -> None:
    space = PRESETS["cifar"]
    assert reference_params(space) is None
    params = {
        "growth_rate": 12,
        "convs_per_block_1": 16,
        "convs_per_block_2": 16,
        "convs_per_block_3": 16,
        "compression": 0.5,
    }
    c = sample(optuna.trial.FixedTrial(params), space)
    assert (c.stem, c.stem_channels, c.image_size, c.bottleneck) == ("cifar", 24, 28, True)
    assert params_of(c) == params  # DenseNet-BC (k=12) with 16 layers a block


def test_param_names_are_config_fields() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    c = sample(trial, PRESETS["d2l"])
    assert set(trial.params) == set(params_of(c))
    assert params_of(c) == trial.params


def test_override_narrows_ranges_and_excludes_reference() -> None:
    space = PRESETS["d2l"].override({"growth_rate": [8, 16, 8], "convs_per_block": [1, 2]}, "t")
    assert space.growth_rate == (8, 16, 8) and space.convs_per_block == (1, 2)
    assert reference_params(space) is None
    two = PRESETS["d2l"].override({"growth_rate": [8, 16]}, "t")
    assert two.growth_rate == (8, 16, 1)


def test_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "space.toml"
    f.write_text("growth_rate = [12, 24, 4]\ncompression = [0.5, 1.0, 0.25]\nimage_size = 64\n")
    space = PRESETS["d2l"].override(load_space_file(f), str(f))
    assert space.growth_rate == (12, 24, 4) and space.image_size == 64
    assert space.compression == (0.5, 1.0, 0.25)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("growth_rate = [8, 64", "not valid TOML"),
        ("depth = 121", "unknown search-space key"),
        ("growth_rate = 8", "must be a list"),
        ('growth_rate = ["a", "b", 1]', "must hold integers"),
        ("growth_rate = [64, 8, 8]", "low 64 > high 8"),
        ("growth_rate = [8, 64, 0]", "step must be positive"),
        ("growth_rate = [8, 60, 8]", "must be a multiple of 8"),
        ("growth_rate = [8, 100000, 8]", "growth_rate must be in"),
        ("compression = [0.0, 1.0, 0.25]", r"must lie in \(0, 1\]"),
        ("compression = [0.5, 2.0, 0.5]", r"must lie in \(0, 1\]"),
        ("image_size = 8", "spatial size reaches 0"),
        ("stem = 'vgg'", "stem must be one of"),
        ("num_blocks = -3", "non-negative integer"),
        ("num_blocks = 1000000000", r"num_blocks must be in \[1, 8\]"),
        ("bottleneck = 'yes'", "true or false"),
        (
            "compression = [0.01, 0.02, 0.01]\ngrowth_rate = [1, 1, 1]\nstem_channels = 1",
            "0 channels",
        ),
        ("x = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
    ],
)
def test_bad_toml(tmp_path: Path, toml: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        PRESETS["d2l"].override(load_space_file(f), str(f))


def test_parse_range() -> None:
    assert parse_range("8:64:8", integer=True) == (8, 64, 8)
    assert parse_range("0.25:1:0.25", integer=False) == (0.25, 1.0, 0.25)
    for bad in ("8", "8:x", "1:2:3:4", "", "1.5:3"):
        with pytest.raises(ConfigError):
            parse_range(bad, integer=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_parse_range_accepts_or_rejects_cleanly(text: str) -> None:
    try:
        r = parse_range(text, integer=True)
    except ConfigError:
        return
    assert len(r) in (2, 3) and all(isinstance(v, int) for v in r)


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "growth_rate",
                "convs_per_block",
                "compression",
                "num_blocks",
                "image_size",
                "stem",
                "stem_channels",
                "bottleneck",
                "bogus",
            ]
        ),
        values,
        max_size=4,
    )
)
def test_override_accepts_or_rejects_cleanly(d: dict) -> None:
    try:
        space = PRESETS["cifar"].override(d, "hypothesis")
    except ConfigError:
        return
    # Whatever is accepted builds valid architectures at both corners and in between, and
    # a sampled one lies between the corners in MACs.
    small, large = space.corners()
    for config in (small, space.middle(), large):
        assert ArchConfig.from_dict(config.to_dict()) == config
    lo, hi = closed_form_mmacs(small), closed_form_mmacs(large)
    assert lo <= closed_form_mmacs(space.middle()) <= hi
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert lo <= closed_form_mmacs(sample(study.ask(), space)) <= hi
