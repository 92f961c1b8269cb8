"""nas.study.rungs: what each rung of a halving search trains on, and its record."""

from __future__ import annotations

import pytest

from nas.errors import ConfigError
from nas.search import main
from nas.study.rungs import Halving
from nas.training.budget import get_budget


def test_each_rung_trains_eta_times_the_one_below_up_to_the_whole_budget() -> None:
    short = get_budget("short")  # 50,000 images
    h = Halving(3)
    assert [h.budget(short, r).train_images for r in range(3)] == [5_555, 16_666, 50_000]
    assert h.budget(short, h.top) == short  # the top rung is the study's own budget
    assert [h.budget(short, r).steps for r in range(3)] == [21, 65, 195]
    assert Halving.from_dict(h.to_dict()) == h
    assert h.describe(short) == "halving 3: 3 rungs of 5,555, 16,666, 50,000 train images"


@pytest.mark.parametrize("bad", [{"eta": 1, "rungs": 3}, {"eta": 3}, {"eta": 2.5, "rungs": 2}])
def test_a_bad_halving_record_is_refused(bad: dict) -> None:
    with pytest.raises(ConfigError):
        Halving.from_dict(bad)


def test_rungs_below_one_batch_are_refused_in_one_line(capsys, tmp_path) -> None:
    """smoke: 512 images in batches of 32; --halving 5 with 3 rungs would train rung 0 on
    20 images, no step at all."""
    url = f"sqlite:///{tmp_path}/h.db"
    argv = ["--trials", "2", "--budget", "smoke", "--halving", "5", "--storage", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rung 0 on 512 / 25 = 20 images" in err, err
    assert main(["--trials", "2", "--rungs", "2"]) == 2
    assert "--rungs goes with --halving" in capsys.readouterr().err
