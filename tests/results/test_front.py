"""nas.results.front: usable trials and the front on a real Optuna study, the knee on fronts whose
answer is known, and the incremental hypervolume against a brute-force sweep."""

from __future__ import annotations

import math
import random

import optuna
import pytest

from nas.arch.space import PRESETS
from nas.results.front import (
    hypervolume_history,
    hypervolume_reference,
    knee_index,
    pareto_front,
    usable_trials,
)

# An L-shaped front: accuracy rises steeply up to 40 MMACs, then barely.
L_FRONT = [(0.84, 20.0), (0.88, 40.0), (0.89, 80.0), (0.895, 160.0)]


def test_knee_is_the_corner_and_stable() -> None:
    assert knee_index(L_FRONT) == 1
    # one tiny, much less accurate network added at the cheap end: the pick stays
    # (nearest-to-ideal after min-max scaling jumped to the tiny network here)
    assert knee_index([(0.80, 10.0), *L_FRONT]) == 2  # still (0.88, 40)
    # the pick depends on neither the order given nor the units of either axis
    shuffled = [L_FRONT[i] for i in (3, 0, 2, 1)]
    assert shuffled[knee_index(shuffled)] == (0.88, 40.0)
    in_macs = [(100 * a, 1e6 * m) for a, m in L_FRONT]
    assert knee_index(in_macs) == 1


def test_knee_without_a_bulge_is_the_most_accurate() -> None:
    straight = [(0.80, 10.0), (0.85, 100.0), (0.90, 1000.0)]  # on the chord (log axis)
    assert knee_index(straight) == 2
    convex = [(0.80, 10.0), (0.81, 100.0), (0.90, 1000.0)]  # below the chord
    assert knee_index(convex) == 2
    assert knee_index([(0.7, 5.0), (0.9, 50.0)]) == 1 and knee_index([(0.7, 5.0)]) == 0
    with pytest.raises(ValueError):
        knee_index([])


def brute_hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Sweep every vertical strip between distinct log10 MACs: the height of the best
    accuracy at or left of it, above the reference."""
    ra, rx = ref[0], math.log10(ref[1])
    pts = [(math.log10(m), a) for a, m in points if a > ra and math.log10(m) < rx]
    xs = sorted({x for x, _ in pts} | {rx})
    total = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        height = max((a for x, a in pts if x <= x0), default=ra)
        total += (x1 - x0) * (height - ra)
    return total


def test_hypervolume_is_exact_after_every_point() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 30)
        # repeated MACs and accuracies on purpose: ties, duplicates, dominated points
        pts = [
            (rng.choice([0.05, 0.5, 0.6, 0.7, 0.8, 0.9]), rng.choice([1, 2, 5, 20, 90, 200]))
            for _ in range(n)
        ]
        history = hypervolume_history(pts, (0.1, 100.0))
        for k in range(n):
            assert history[k] == pytest.approx(brute_hypervolume(pts[: k + 1], (0.1, 100.0)))
        assert history == sorted(history)  # never shrinks


def test_hypervolume_by_hand() -> None:
    pts = [(0.5, 10.0), (0.9, 100.0), (0.4, 1.0)]
    hv = hypervolume_history(pts, (0.1, 110.0))
    assert hv[0] == pytest.approx((math.log10(110) - 1) * 0.4)
    # sweep over log10 MACs: 0 -> 1 at 0.4-0.1, 1 -> 2 at 0.5-0.1, 2 -> log10(110) at 0.9-0.1
    assert hv[2] == pytest.approx(0.3 + 0.4 + (math.log10(110) - 2) * 0.8)


def test_reference_is_fixed_by_the_study() -> None:
    # the d2l space's largest network (k=64, 8 convs per block, theta=1): 2,056.5 MMACs
    acc, mmacs = hypervolume_reference(PRESETS["d2l"].to_dict(), None)
    assert acc == 0.1 and mmacs == pytest.approx(1.1 * 2056.471872)
    assert hypervolume_reference(PRESETS["d2l"].to_dict(), 100.0)[1] == pytest.approx(110.0)


def test_front_of_a_real_study(tmp_path) -> None:
    """Complete, trained, feasible trials only; the front equals a brute-force one."""
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path}/f.db", directions=["maximize", "minimize"]
    )
    rng = random.Random(1)
    for i in range(40):
        acc, mmacs = round(rng.uniform(0.5, 0.9), 3), round(rng.uniform(1, 100), 1)
        trained = i % 7 != 3
        study.add_trial(
            optuna.trial.create_trial(
                values=[acc if trained else 0.0, mmacs],
                user_attrs={"trained": trained},
                system_attrs={"constraints": [mmacs - 80]},
            )
        )
    usable = usable_trials(study)
    assert all(t.user_attrs["trained"] and t.values[1] <= 80 for t in usable)
    assert len(usable) == sum(
        1 for t in study.trials if t.user_attrs["trained"] and t.values[1] <= 80
    )

    def dominated(t: optuna.trial.FrozenTrial) -> bool:
        return any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
            for o in usable
        )

    front = pareto_front(study)
    assert {t.number for t in front} == {t.number for t in usable if not dominated(t)}
    assert [t.values[1] for t in front] == sorted(t.values[1] for t in front)


def test_fronts_crowding_and_the_most_promising() -> None:
    from nas.results.front import crowding_distance, most_promising, nondominated_fronts

    pts = [(0.80, 10.0), (0.85, 20.0), (0.90, 40.0), (0.82, 20.0), (0.84, 40.0), (0.70, 50.0)]
    assert nondominated_fronts(pts) == [[0, 1, 2], [3, 4], [5]]
    crowd = crowding_distance([(0.80, 10.0), (0.85, 20.0), (0.86, 40.0), (0.90, 80.0)])
    assert crowd[0] == crowd[3] == math.inf
    # inner points: the gap between neighbours, normalised on each axis (log10 MACs)
    assert crowd[1] == pytest.approx((0.86 - 0.80) / 0.10 + math.log10(4) / math.log10(8))
    assert most_promising(pts, 3) == [0, 1, 2]  # the whole first front fits
    assert sorted(most_promising(pts, 4)) == [0, 1, 2, 3] or sorted(most_promising(pts, 4)) == [
        0,
        1,
        2,
        4,
    ]
    # of a front that does not fit, the ends (infinitely crowded-apart) go first
    assert sorted(most_promising([(0.80, 10.0), (0.85, 20.0), (0.86, 40.0), (0.9, 80.0)], 2)) == [
        0,
        3,
    ]


def test_the_noise_rule() -> None:
    from nas.results.front import within_noise

    # one run each, stdev 0.002: a difference has stdev 0.00283; noise below 0.00566
    assert within_noise(0.890, 0.895, 0.002)
    assert not within_noise(0.890, 0.896, 0.002)
    # means of 4 seeds: the difference's stdev halves (0.002 * sqrt(2/4))
    assert not within_noise(0.890, 0.893, 0.002, seeds=4)
    assert within_noise(0.890, 0.892, 0.002, seeds=4)
    # a mean of 4 against a single run: 2 * 0.002 * sqrt(1/4 + 1) = 0.00447
    assert within_noise(0.890, 0.8944, 0.002, seeds=4, seeds_b=1)
    assert not within_noise(0.890, 0.8946, 0.002, seeds=4, seeds_b=1)
    assert not within_noise(0.890, 0.8944, 0.002, seeds=4)  # with the seeds asked, 4 each


def test_pooled_stdev_weights_each_group_by_its_degrees_of_freedom() -> None:
    from nas.results.front import pooled_stdev

    # variances 1 (3 runs, 2 dof) and 2 (2 runs, 1 dof): (2 * 1 + 1 * 2) / 3
    stdev, dof = pooled_stdev([[1.0, 2.0, 3.0], [2.0, 4.0], [7.0]])
    assert dof == 3 and abs(stdev - (4 / 3) ** 0.5) < 1e-15
    assert pooled_stdev([[1.0], [2.0]]) is None  # no group of 2 or more runs
    # the plain mean of the variances, which ignores the missing run, is another figure
    assert abs(stdev - ((1 + 2) / 2) ** 0.5) > 0.05


def test_the_first_front_in_one_pass_equals_the_brute_force_one() -> None:
    from nas.results.front import dominates, first_front

    rng = random.Random(7)
    for dims in (2, 3):
        points = [
            (
                round(rng.uniform(0.5, 0.9), 2),
                *(float(rng.randint(1, 30)) for _ in range(dims - 1)),
            )
            for _ in range(300)
        ]
        points += points[:10]  # repeats: equal points dominate neither
        brute = {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}
        assert set(first_front(points)) == brute
