"""nas.study.record: the one place that names what a trial and a study store."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import optuna
import pytest

from nas.study.record import (
    EXPERIMENT_KEYS,
    RECORD_VERSION,
    StudyRecord,
    TrialRecord,
    experiment,
    stored_experiment,
    trial_attrs,
    write_study,
    write_trial,
)

NAS = Path(__file__).resolve().parents[2] / "nas"


def test_a_trial_reads_back_what_was_written_and_defaults_for_the_rest() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    costs = {"macs": {"value": 1.5, "unit": "MMACs (fvcore)", "device": "-"}}
    write_trial(trial, macs_fvcore=1_500_000, costs=costs, over_budget=("macs",), trained=False)
    study.tell(trial, [0.0, 1.5])
    r = TrialRecord.of(study.trials[0])
    assert (r.macs_fvcore, r.mmacs, r.costs, r.over_budget) == (1_500_000, 1.5, costs, ("macs",))
    assert r.trained is False and r.duplicate_of is None and r.timed_beside == 1
    assert TrialRecord.of(study.trials[0]) == r  # one reading is every reading
    assert study.trials[0].user_attrs["over_budget"] == ["macs"]  # JSON keeps lists


def test_a_key_outside_the_record_is_refused() -> None:
    study = optuna.create_study()
    with pytest.raises(AssertionError, match="not a key of a trial's record"):
        write_trial(study.ask(), overbudget=["macs"])  # a typo of over_budget
    with pytest.raises(AssertionError, match="not a key of a trial's record"):
        trial_attrs(sourcetrial=3)
    with pytest.raises(AssertionError, match="not a key of a study's record"):
        write_study(study, max_mmacs=5.0)  # folded into the cost limits


def test_a_study_round_trips_its_experiment() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    stored = experiment({"growth_rate": [8, 16, 4]}, ("accuracy", "macs"), {}, "fp32 (CPU)",
                        {"classes": 10}, {"name": "smoke", "augment": "none"})  # fmt: skip
    assert list(stored) == list(EXPERIMENT_KEYS) and stored["record"] == RECORD_VERSION
    assert stored_experiment(study) == {}
    for key, value in stored.items():
        write_study(study, **{key: value})
    assert stored_experiment(study) == stored
    s = StudyRecord.of(study)
    assert s.objectives == ("accuracy", "macs") and s.budget["name"] == "smoke"
    assert s.is_search and not StudyRecord().is_search
    assert s.limits_history == [] and s.source_study is None


def test_no_module_but_the_record_names_a_stored_key() -> None:
    """Every other module reads and writes a trial or a study through the record: no
    `user_attrs[...]`, `user_attrs.get(...)` or `set_user_attr(...)` elsewhere in nas/."""
    pattern = re.compile(r"user_attrs\s*(\[|\.get\()|set_user_attr\(")
    found = [
        f"{p.relative_to(NAS)}:{i}"
        for p in sorted(NAS.rglob("*.py"))
        if p.name != "record.py"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
    assert pattern.search('t.user_attrs["config"]') and pattern.search("s.set_user_attr(")


def test_every_field_is_documented_in_place() -> None:
    """A field of either record says what it holds: a comment on its line or above."""
    import inspect

    from nas.study import record

    source = inspect.getsource(record)
    for cls in (TrialRecord, StudyRecord):
        for f in fields(cls):
            line = next(x for x in source.splitlines() if x.strip().startswith(f"{f.name}:"))
            above = source.splitlines()[source.splitlines().index(line) - 1].strip()
            assert "#" in line or above.startswith("#"), f"{cls.__name__}.{f.name}"
