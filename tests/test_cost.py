"""nas.cost: fvcore counts, the closed form that must equal them, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest

from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.arch.macs import closed_form_macs, measure_cost
from nas.arch.space import PRESETS, SearchSpace, sample
from nas.cost import main


def random_configs(space: SearchSpace, n: int, seed: int) -> list[ArchConfig]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        out.append(sample(t, space))
        study.tell(t, 0.0)
    return out


CASES = (
    random_configs(PRESETS["d2l"], 12, seed=2)
    + random_configs(PRESETS["cifar"], 12, seed=3)
    + [
        ArchConfig(
            growth_rate=7,
            convs_per_block=(3, 1, 2),
            compression=0.3,
            bottleneck=True,
            stem="d2l",
            stem_channels=20,
            in_channels=3,
            image_size=61,
            num_classes=5,
        ),
        ArchConfig(
            growth_rate=5,
            convs_per_block=(2,),
            compression=1.0,
            stem="cifar",
            stem_channels=3,
            image_size=9,
            num_classes=2,
        ),
    ]
)


@pytest.mark.parametrize("config", CASES, ids=lambda c: f"{c.stem}-{c.image_size}-{c.describe()}")
def test_closed_form_equals_fvcore(config: ArchConfig) -> None:
    cost = measure_cost(config)
    closed = closed_form_macs(config)
    assert closed == cost.fvcore_by_operator  # conv, linear, batch_norm, pool: each exact
    assert sum(closed.values()) == cost.fvcore_macs


def test_d2l_chapter_cost() -> None:
    cost = measure_cost(D2L_CHAPTER)
    assert cost.params == 758_226
    # conv + linear is what the chapter's network does per 96x96 image
    assert cost.fvcore_by_operator["conv"] + cost.fvcore_by_operator["linear"] == 129_077_168


def test_cli_text_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "d2l.json"
    f.write_text(D2L_CHAPTER.to_json())
    assert main([str(f)]) == 0
    text = capsys.readouterr().out
    assert "params         758,226" in text
    assert "MACs (fvcore)  130,421,912" in text
    assert "    4    3x3      4       120 -> 248" in text
    assert re.search(
        r"CPU latency    \d+\.\d{3} ms per image at batch 1, fp32, eval mode \(median "
        r"of (\d+) runs, quartiles \d+% apart; cpu, 1 thread",
        text,
    )
    assert main([str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lat = out["latency_cpu"]
    assert lat["unit"] == "ms" and lat["value"] > 0 and 5 <= lat["runs"] <= 21
    assert out["params"] == 758_226
    assert out["fvcore_macs"] == out["closed_form_macs"] == 130_421_912
    assert [b["out_channels"] for b in out["plan"]] == [192, 224, 240, 248]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ('{"growth_rate": 32, "depth": 121}', "unknown architecture key"),
        ('{"growth_rate": "32"}', "growth_rate must be an integer"),
        ('{"growth_rate": 99999999}', "growth_rate must be in"),
        ('{"convs_per_block": [-4, 4]}', "must be in"),
        ('{"image_size": 4}', "spatial size reaches 0"),
        ("[1, 2, 3]", "must be a JSON object"),
    ],
)
def test_cli_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    f = tmp_path / "bad.json"
    if content is not None:
        f.write_text(content)
    assert main([str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas.cost: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
