"""The accuracy-vs-MACs front of a study: which trials count, the front, its knee, and the
hypervolume after each trial.

Optuna already knows the Pareto front (`study.best_trials`, constraints included); this
module adds what Optuna does not: which trials are usable (complete, trained, feasible),
a knee that is stable, and a hypervolume history against a reference point that is fixed
for the study, computed incrementally in one pass.

Refining (nas.refine) picks the most promising trials by NSGA-II's rule: whole
non-dominated fronts while they fit, then the most spread-out members of the next.

Noise: two accuracies are told apart only when they differ by more than twice the
standard deviation of their difference (`within_noise`).

Knee: the front point farthest above the chord that joins the front's two ends, in the
plot's own axes (accuracy against log10 MACs). The distance to a line scales by the same
factor for every point when either axis is rescaled, so the pick does not depend on
units or on any normalisation; a point added beyond one end moves the chord a little,
not the pick to that end. With fewer than three points, or where no point lies above the
chord (no knee), the pick is the most accurate point.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from typing import Any

import optuna

from nas.arch.macs import closed_form_mmacs
from nas.arch.space import SearchSpace
from nas.study.metrics import COSTS, Limits, judged_value
from nas.study.record import StudyRecord, TrialRecord
from nas.study.rungs import Halving, rung_counts, rung_of

__all__ = [
    "REF_ACCURACY",
    "crowding_distance",
    "dominates",
    "first_front",
    "over_limits",
    "hypervolume_history",
    "hypervolume_reference",
    "kendall_tau",
    "knee_index",
    "most_promising",
    "nondominated_fronts",
    "pareto_front",
    "pooled_stdev",
    "ranks",
    "spearman_rho",
    "usable_trials",
    "why_no_front",
    "within_noise",
]

REF_ACCURACY = 0.1  # the hypervolume's reference accuracy (chance on Fashion-MNIST's 10 classes)
REF_MACS_FACTOR = 1.1  # the reference MACs: 1.1 x the largest network the study can train


def over_limits(
    study: optuna.Study, t: optuna.trial.FrozenTrial, attrs: StudyRecord | None = None
) -> list[str]:
    """The constraints `t` breaks under the study's cost limits as they are now (they may
    have changed since it ran: nas.study.storage.update_limits), from its stored costs; a
    limit whose cost `t` never measured keeps the constraint value stored with it. A study
    that records no experiment (not made by nas.search) is judged by its stored
    constraints. `attrs`: the study's record, read once by a caller looping over trials."""
    s = StudyRecord.of(study) if attrs is None else attrs
    if not s.is_search:
        return [name for name, v in t.constraints.items() if v > 0]
    limits = Limits.from_dict(s.limits)
    excess = {**t.constraints, **limits.excess(TrialRecord.of(t).costs)}
    current = {name for name, *_ in limits.checks()}
    return [name for name, v in excess.items() if v > 0 and name in current]


def why_no_front(study: optuna.Study) -> str:
    """Why a study has no usable trial: per cost limit, how many trials it excluded and
    the cheapest network's cost in its unit (what the limit would have to allow)."""
    s = StudyRecord.of(study)
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not done:
        return "no complete trial yet"
    records = [TrialRecord.of(t) for t in done]
    halving = Halving.of(s)
    per_rung = [] if halving is None else [n for n, _ in rung_counts(study, halving)]
    if halving is not None and not per_rung[-1]:
        return (
            f"no network has reached the top rung (rung {halving.top}, the whole train "
            f"budget) yet; networks trained per rung: {', '.join(map(str, per_rung))}: "
            "run more --trials"
        )
    words = []
    for _, key, limit, scale in Limits.from_dict(s.limits).checks():
        values = [judged_value(r.costs, key) * scale for r in records if key in r.costs]
        over = sum(v > limit for v in values)
        if over:
            cap = COSTS[key].limit
            assert cap is not None
            option = cap.option + (f" ({cap.device.upper()})" if cap.device else "")
            words.append(
                f"{option} {limit:g} excluded {over} of {len(values)} (the cheapest "
                f"measured: {min(values):.4g} {cap.unit})"
            )
    untrained = sum(not r.trained for r in records)
    return "no trial is within the budgets: " + (
        "; ".join(words) or f"{untrained} of {len(done)} complete trials were not trained"
    )


def usable_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete, trained trials within the study's current budgets; in a halving search,
    those of the top rung (the whole train budget: lower rungs' accuracies are of shorter
    runs, not to be ranked with them)."""
    attrs = StudyRecord.of(study)  # one read of the study, not one per trial
    halving = Halving.of(attrs)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if TrialRecord.of(t).trained
        and (halving is None or rung_of(TrialRecord.of(t), halving) == halving.top)
        and not over_limits(study, t, attrs)
    ]


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Usable trials that no usable trial beats on every objective of the study (accuracy
    and one or two costs), cheapest in the first cost objective first."""
    usable = usable_trials(study)
    front = [usable[i] for i in first_front([tuple(t.values) for t in usable])]
    return sorted(front, key=lambda t: (t.values[1], -t.values[0]))


def first_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates, in one pass: in the order of
    accuracy descending, then each cost ascending, a point's dominators all come before
    it, and one of them is on the front already (dominance is transitive): O(n x front)."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], *points[i][1:]))
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return front


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

    MMACs: REF_MACS_FACTOR x the largest network the study can train, the larger corner
    of its search space (MACs grow with k, convs and theta) or the MAC limit, whichever
    is smaller, so that past hypervolumes never change as the study grows.
    """
    largest = closed_form_mmacs(SearchSpace.from_dict(space).corners()[1])
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


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """p at least as accurate (p[0]) and at most as costly (p[1:]) as q, and not equal."""
    return p[0] >= q[0] and all(a <= b for a, b in zip(p[1:], q[1:])) and tuple(p) != tuple(q)


def nondominated_fronts(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """Indices of (accuracy, cost, ...) points sorted into fronts: the first front, then
    the front of what is left, and so on (NSGA-II's non-dominated sorting)."""
    left, fronts = list(range(len(points))), []
    while left:
        front = sorted(left[k] for k in first_front([points[i] for i in left]))
        fronts.append(front)
        taken = set(front)
        left = [i for i in left if i not in taken]
    return fronts


def crowding_distance(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance within one front, in accuracy and log10 of each cost:
    the ends are infinitely far; inner points by the normalised gap between their
    neighbours."""
    n, out = len(points), [0.0] * len(points)
    axes = [[p[0] for p in points]]
    axes += [[math.log10(p[i]) for p in points] for i in range(1, len(points[0]))] if n else []
    for values in axes:
        order = sorted(range(n), key=values.__getitem__)
        span = values[order[-1]] - values[order[0]]
        out[order[0]] = out[order[-1]] = math.inf
        for k in range(1, n - 1):
            if span > 0:
                out[order[k]] += (values[order[k + 1]] - values[order[k - 1]]) / span
    return out


def most_promising(points: Sequence[Sequence[float]], k: int) -> list[int]:
    """k indices: whole fronts in order while they fit, then the most spread-out members
    (largest crowding distance) of the first front that does not."""
    chosen: list[int] = []
    for front in nondominated_fronts(points):
        if len(chosen) + len(front) <= k:
            chosen += front
            continue
        crowd = crowding_distance([points[i] for i in front])
        by_spread = sorted(range(len(front)), key=lambda j: -crowd[j])
        chosen += [front[j] for j in by_spread[: k - len(chosen)]]
        break
    return chosen


def within_noise(
    a: float, b: float, seed_stdev: float, seeds: int = 1, seeds_b: int | None = None
) -> bool:
    """Can two accuracies, means of `seeds` and `seeds_b` (default: as many) runs with this
    per-run seed stdev, not be told apart? Their difference has stdev
    sigma * sqrt(1/seeds + 1/seeds_b); differences under twice that (about a 95% band)
    are noise, not a ranking."""
    n_b = seeds if seeds_b is None else seeds_b
    return abs(a - b) < 2 * seed_stdev * math.sqrt(1 / seeds + 1 / n_b)


def pooled_stdev(groups: Sequence[Sequence[float]]) -> tuple[float, int] | None:
    """(pooled standard deviation, degrees of freedom) of groups of repeated runs, each
    group one architecture's seeds: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over the
    groups of 2 or more runs (weighted by their degrees of freedom, so a group missing a
    run counts for less); None if there is none. Its square is an unbiased estimate of
    sigma^2; the median of the groups' stdevs is not (about 0.86 sigma at 3 runs each)."""
    used = [g for g in groups if len(g) >= 2]
    if not used:
        return None
    dof = sum(len(g) - 1 for g in used)
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in used) / dof), dof


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either list count for neither side)."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    n1 = concordant + discordant + ties_x
    n2 = concordant + discordant + ties_y
    return (concordant - discordant) / math.sqrt(n1 * n2) if n1 and n2 else float("nan")


def ranks(v: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their average rank."""
    order = sorted(range(len(v)), key=lambda i: v[i])
    out = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman_rho(x: list[float], y: list[float]) -> float:
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else float("nan")
