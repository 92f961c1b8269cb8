"""The accuracy-vs-MACs front of a study: which trials count, the front, its knee, and the
hypervolume after each trial.

Optuna already knows the Pareto front (`study.best_trials`, constraints included); this
module adds what Optuna does not: which trials are usable (complete, trained, feasible),
a knee that is stable, and a hypervolume history against a reference point that is fixed
for the study, computed incrementally in one pass.

Knee: the front point farthest above the chord that joins the front's two ends, in the
plot's own axes (accuracy against log10 MACs). The distance to a line scales by the same
factor for every point when either axis is rescaled, so the pick does not depend on
units or on any normalisation; a point added beyond one end moves the chord a little,
not the pick to that end. With fewer than three points, or where no point lies above the
chord (no knee), the pick is the most accurate point.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

import optuna

from nas.cost import closed_form_macs
from nas.space import SearchSpace

__all__ = [
    "REF_ACCURACY",
    "hypervolume_history",
    "hypervolume_reference",
    "knee_index",
    "pareto_front",
    "usable_trials",
]

REF_ACCURACY = 0.1  # chance on 10 classes: the hypervolume's reference accuracy
REF_MACS_FACTOR = 1.1  # the reference MACs: 1.1 x the largest network the study can train


def usable_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete, trained, feasible trials."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.user_attrs.get("trained") is True and all(c <= 0 for c in t.constraints.values())
    ]


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials no feasible trial beats on both accuracy and MACs, fewest MACs first."""
    front = [t for t in study.best_trials if t.user_attrs.get("trained") is True]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0]))


def knee_index(points: Sequence[tuple[float, float]]) -> int:
    """Index of the knee among front points (accuracy, MMACs); see the module docstring."""
    if not points:
        raise ValueError("an empty front has no knee")
    order = sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0]))
    most_accurate = max(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    if len(points) < 3:
        return most_accurate
    (a0, m0), (a1, m1) = points[order[0]], points[order[-1]]
    x0, dx, da = math.log10(m0), math.log10(m1) - math.log10(m0), a1 - a0

    def above(i: int) -> float:  # |chord| x signed distance above the chord
        a, m = points[i]
        return dx * (a - a0) - da * (math.log10(m) - x0)

    best = max(order, key=lambda i: (above(i), points[i][0]))
    return best if above(best) > 0 else most_accurate


def hypervolume_reference(space: dict[str, Any], max_mmacs: float | None) -> tuple[float, float]:
    """(accuracy, MMACs) of a reference point fixed for the whole study.

    MMACs: 1.1 x the largest network the study can train, the larger corner of its search
    space (MACs grow with k, convs and theta) or the MAC budget, whichever is smaller, so
    that past hypervolumes never change as the study grows.
    """
    largest = sum(closed_form_macs(SearchSpace.from_dict(space).corners()[1]).values()) / 1e6
    if max_mmacs is not None:
        largest = min(largest, max_mmacs)
    return REF_ACCURACY, REF_MACS_FACTOR * largest


def hypervolume_history(
    points: Iterable[tuple[float, float]], ref: tuple[float, float]
) -> list[float]:
    """The hypervolume after each point (accuracy, MMACs), in the order given.

    The area, in accuracy x log10 MMACs, that the points seen so far dominate above the
    reference accuracy and left of the reference MACs. One pass: the front is kept as a
    staircase sorted by MACs and each point adds only the area it newly dominates
    (a bisection and the front points it removes).
    """
    ref_acc, ref_x = ref[0], math.log10(ref[1])
    xs: list[float] = []  # the front's log10 MMACs, ascending
    ys: list[float] = []  # its accuracies, ascending with xs
    hv, out = 0.0, []
    for acc, mmacs in points:
        x = math.log10(mmacs)
        i = bisect_right(xs, x)  # xs[:i] <= x
        if acc > ref_acc and x < ref_x and (i == 0 or ys[i - 1] < acc):
            height, left, j = (ys[i - 1] if i else ref_acc), x, i
            while j < len(xs) and ys[j] <= acc:  # front points this one dominates
                hv += (xs[j] - left) * (acc - height)
                height, left, j = ys[j], xs[j], j + 1
            hv += ((xs[j] if j < len(xs) else ref_x) - left) * (acc - height)
            start = i - 1 if i and xs[i - 1] == x else i  # same MACs, less accurate: gone
            xs[start:j], ys[start:j] = [x], [acc]
        out.append(hv)
    return out
