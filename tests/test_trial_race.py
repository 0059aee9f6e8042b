"""Racing a search's trials by the hypervolume they can add (medmerge.selection.trial_race), and the frontier
bisection that proposes where to look next (optuna_search.frontier_bisection). Every expected stop, estimate
and proposal below is worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmerge.merge.recipe import SweepSpec
from medmerge.selection import optuna_search
from medmerge.selection.racing import MemoryRangeCache, Objective, RacingError, RacingPlan, Stratum
from medmerge.selection.trial_race import TrialRace

N = 8      # documents per stratum


def _plan(first: int = 2) -> RacingPlan:
    strata = (Stratum("a", N, low=-10.0, high=10.0), Stratum("b", N, low=-10.0, high=10.0))
    return RacingPlan(strata, (Objective("x", {"a": 1.0}), Objective("y", {"b": 1.0})), first=first, seed=0)


# parents: x = mean of stratum a, y = mean of stratum b. P0 = (0, 4), P1 = (4, 0): reference (0, 0), ideal box 16.
DOCS = np.arange(N, dtype=float) - 3.5          # per-document spread, mean 0: the same for every model
PARENTS = {"p0": [DOCS + 0.0, DOCS + 4.0], "p1": [DOCS + 4.0, DOCS + 0.0]}


def _values(shift_a: float, shift_b: float, noise: float = 0.0):
    rng = np.random.default_rng(1)
    return [DOCS + shift_a + noise * rng.standard_normal(N), DOCS + shift_b + noise * rng.standard_normal(N)]


def _race(models: dict, calls: list | None = None, **kw) -> TrialRace:
    def scorer(name, docs):
        if calls is not None:
            calls.append((name, docs.stratum, docs.start, docs.stop))
        k = 0 if docs.stratum == "a" else 1
        return models[name][k][list(docs.documents)]

    return TrialRace(_plan(), scorer, PARENTS, **kw)


def test_reference_point_box_and_hypervolume_by_hand():
    race = _race({"m": _values(3.0, 3.0)})
    assert race.reference == (0.0, 0.0) and race.box == 16.0
    assert race.threshold == pytest.approx(0.005 * 16.0)
    assert race.hypervolume() == 0.0                   # the parents are references, not finished trials
    # m = (3, 3) is better than the chord: finished on every document, it adds the 3 x 3 square
    (course,) = race.race(["m"])
    assert not course.stopped and course.documents == {"a": N, "b": N}
    assert course.estimate == pytest.approx((3.0, 3.0)) and course.half_width == (0.0, 0.0)
    assert race.hypervolume() == pytest.approx(9.0)
    assert race.gain((1.0, 4.0)) == pytest.approx(1.0 * 1.0)      # the strip x in [0, 1], y in [3, 4]
    assert race.spent == 2 * N and race.decisions[-1].spent == 2 * N


def test_a_control_variate_estimate_is_exact_when_the_difference_is_constant():
    # m - p0 is +1 on every document of a and -1 on every document of b: the paired stderr is 0 (kappa 0), so
    # after round 1 (2 documents per stratum, whose raw mean is far from the full mean) the estimate is
    # p0's scores + (1, -1) = (1, 3), exactly, with zero width
    race = _race({})
    seen = [PARENTS["p0"][0][race.orders[0][:2]] + 1.0, PARENTS["p0"][1][race.orders[1][:2]] - 1.0]
    est, upper = race.bounds(seen)
    assert est == pytest.approx([1.0, 3.0]) and upper == pytest.approx([1.0, 3.0])
    raw = [float(np.mean(v)) for v in seen]
    assert raw != pytest.approx([1.0, 3.0])             # the plain mean of two documents is not the estimate


def test_a_trial_that_cannot_add_hypervolume_stops_after_round_one():
    # first m = (3, 3) finishes (hypervolume 9). Then c = m - 0.5 on every document: its estimate (2.5, 2.5)
    # by the control variate m has zero width, m dominates it, so it adds 0 < threshold and stops after
    # round 1, having used 2 + 2 documents
    models = {"m": _values(3.0, 3.0), "c": _values(2.5, 2.5)}
    race = _race(models)
    race.race(["m"])
    (course,) = race.race(["c"])
    assert course.stopped and course.stopped_round == 1
    assert course.documents == {"a": 2, "b": 2} and course.documents_used == 4
    assert course.estimate == pytest.approx((2.5, 2.5))
    assert "adds at most 0 to the hypervolume" in course.reason
    assert race.hypervolume() == pytest.approx(9.0) and race.spent == 2 * N + 4


def test_a_pool_finishes_its_best_first_and_the_near_copy_then_stops():
    # raced together: after round 1 both estimates are exact (constant offsets from the parents); a = (3, 3)
    # adds 9, b = (2.9, 2.9) adds 8.41, so a is taken on first and finished; b then adds 0 and stops with 4
    # documents. Decisions: a (finished, spent 4 + 16 - 4), then b
    models = {"a": _values(3.0, 3.0), "b": _values(2.9, 2.9)}
    calls: list = []
    race = _race(models, calls)
    courses = race.race(["b", "a"])                   # the order given does not decide who is finished first
    assert [c.name for c in courses] == ["b", "a"]
    assert [d.course.name for d in race.decisions] == ["a", "b"]
    assert not courses[1].stopped and courses[0].stopped and courses[0].documents_used == 4
    assert race.spent == 2 * N + 4
    assert race.decisions[0].hypervolume == pytest.approx(9.0)


def test_an_uncertain_trial_runs_on_and_a_good_one_is_finished():
    # noisy differences: the upper corner stays above the threshold, so the trial is raced to the end
    models = {"n": _values(2.0, 2.0, noise=3.0)}
    race = _race(models)
    (course,) = race.race(["n"])
    assert not course.stopped and course.documents_used == 2 * N
    assert course.estimate == pytest.approx((float(models["n"][0].mean()), float(models["n"][1].mean())))


def test_min_gain_zero_scores_every_trial_in_full():
    models = {"m": _values(3.0, 3.0), "c": _values(2.5, 2.5)}
    race = _race(models, min_gain=0.0)
    race.race(["m"])
    (course,) = race.race(["c"])
    assert not course.stopped and course.documents_used == 2 * N


def test_ranges_are_cached_so_a_rerun_scores_nothing():
    models = {"m": _values(3.0, 3.0), "c": _values(2.5, 2.5)}
    cache = MemoryRangeCache()
    calls: list = []
    first = _race(models, calls, cache=cache)
    first.race(["m"])
    first.race(["c"])
    scored = len(calls)
    assert scored > 0
    again = _race(models, calls, cache=cache)
    again.race(["m"])
    again.race(["c"])
    assert len(calls) == scored                       # every range read back
    assert [d.course.record(2 * N) for d in again.decisions] == [d.course.record(2 * N) for d in first.decisions]


@pytest.mark.parametrize("kw,match", [
    ({"confidence": 1.0}, "confidence is 1.0"),
    ({"min_gain": -0.1}, "min_gain is -0.1"),
    ({"min_gain": math.nan}, "min_gain is nan"),
    ({"kappa": -1.0}, "kappa is -1.0"),
])
def test_settings_out_of_their_domain_are_refused(kw, match):
    with pytest.raises(RacingError, match=match):
        _race({}, **kw)


def test_bad_plans_references_names_and_scores_are_refused():
    three = RacingPlan(_plan().strata, (*_plan().objectives, Objective("z", {"a": 1.0})), first=2)
    with pytest.raises(RacingError, match="needs two objectives, not 3"):
        TrialRace(three, lambda n, d: [], PARENTS)
    with pytest.raises(RacingError, match="needs every document"):
        TrialRace(_plan(), lambda n, d: [], {"p0": [DOCS[:3], DOCS]})
    with pytest.raises(RacingError, match="at least one reference"):
        TrialRace(_plan(), lambda n, d: [], {})
    race = _race({"m": _values(3.0, 3.0)})
    with pytest.raises(RacingError, match="must be new and unique"):
        race.race(["p0"])
    with pytest.raises(RacingError, match="must be new and unique"):
        race.race(["m", "m"])
    bad = TrialRace(_plan(), lambda n, d: [math.nan] * len(d.documents), PARENTS)
    with pytest.raises(RacingError, match="expected 2 finite"):
        bad.race(["x"])
    outside = TrialRace(_plan(), lambda n, d: [11.0] * len(d.documents), PARENTS)     # the strata hold [-10, 10]
    with pytest.raises(RacingError, match=r"value outside \[-10.0, 10.0\] for x on a"):
        outside.race(["x"])


# --- frontier bisection ------------------------------------------------------------------------------------


def _space() -> SweepSpec:
    return SweepSpec(clinical="c", instruct="i", base="b", search="optuna", budget=9,
                     methods={"linear": {"ratio": {"low": 0.0, "high": 1.0}},
                              "task_arithmetic": {"ratio": {"low": 0.0, "high": 1.0},
                                                  "lambda": {"low": 0.5, "high": 2.0, "log": True}},
                              "ties": {"ratio": {"low": 0.0, "high": 1.0}, "density": [0.3, 0.6]}})


def _hv_gain(points):
    """What a point adds to the hypervolume of ``points`` (reference (0, 0))."""
    from medmerge.selection.pareto import ScoredPoint, hypervolume

    pts = [ScoredPoint(name=str(i), x=x, y=y) for i, (x, y) in enumerate(points)]
    base = hypervolume(pts, reference=(0.0, 0.0)) if pts else 0.0
    return lambda p: hypervolume([*pts, ScoredPoint(name="new", x=p[0], y=p[1])], reference=(0.0, 0.0)) - base


def test_bisection_proposes_the_midpoint_of_the_pair_with_the_largest_gap():
    lin = lambda r: {"method": "linear", "linear.ratio": r}            # noqa: E731
    # three linear trials on a concave front: (1, 4) at 0.2, (3, 3) at 0.5, (4, 1) at 0.8. Chord midpoints:
    # 0.2-0.5 -> (2, 3.5): adds (2 - 1) x (3.5 - 3) = 0.5; 0.5-0.8 -> (3.5, 2): adds 0.5 x 1 = 0.5 as well; the
    # far pair 0.2-0.8 -> (2.5, 2.5) is dominated by (3, 3): 0. A tie is broken by the first pair found (0.2-0.5).
    scored = [(lin(0.2), 1.0, 4.0), (lin(0.5), 3.0, 3.0), (lin(0.8), 4.0, 1.0)]
    gain = _hv_gain([(x, y) for _, x, y in scored])
    tried: set[str] = set()
    assert optuna_search.frontier_bisection(_space(), scored, gain, tried) == [lin(0.35)]
    # asked again, the proposal already tried is skipped: the other gap
    assert optuna_search.frontier_bisection(_space(), scored, gain, tried) == [lin(0.65)]
    # and then nothing adds hypervolume: no proposal (the sampler proposes)
    assert optuna_search.frontier_bisection(_space(), scored, gain, tried) == []
    assert len(tried) == 2


def test_bisection_pairs_a_method_with_itself_only_one_proposal_per_method_best_first():
    ta = lambda r, lam: {"method": "task_arithmetic", "task_arithmetic.ratio": r,   # noqa: E731
                         "task_arithmetic.lambda": lam}
    scored = [({"method": "linear", "linear.ratio": 0.2}, 1.0, 4.0), ({"method": "linear", "linear.ratio": 0.8}, 4.0, 1.0),
              (ta(0.2, 0.5), 1.5, 4.5), (ta(0.8, 2.0), 4.5, 1.5)]
    gain = _hv_gain([(x, y) for _, x, y in scored])
    got = optuna_search.frontier_bisection(_space(), scored, gain, set())
    # task arithmetic's chord midpoint (3, 3) adds more than linear's (2.5, 2.5) (which (1.5, 4.5)/(4.5, 1.5) leave
    # uncovered only in part); lambda is a log range, so its midpoint is geometric: sqrt(0.5 x 2) = 1
    assert got[0] == ta(0.5, 1.0)
    assert got[1] == {"method": "linear", "linear.ratio": 0.5}
    assert len(got) == 2                                # never a linear-task_arithmetic pair


def test_bisection_never_mixes_choices_of_a_categorical():
    ties = lambda r, d: {"method": "ties", "ties.ratio": r, "ties.density": d}       # noqa: E731
    scored = [(ties(0.2, "0.3"), 1.0, 4.0), (ties(0.8, "0.6"), 4.0, 1.0)]
    assert optuna_search.frontier_bisection(_space(), scored, _hv_gain([(1, 4), (4, 1)]), set()) == []
    scored = [(ties(0.2, "0.3"), 1.0, 4.0), (ties(0.8, "0.3"), 4.0, 1.0)]
    assert optuna_search.frontier_bisection(_space(), scored, _hv_gain([(1, 4), (4, 1)]), set()) == [ties(0.5, "0.3")]
