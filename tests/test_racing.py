"""Racing (medmerge.selection.racing): the stopping rule on hand-made score streams, the cache, a kill and a resume."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from medmerge.selection import pareto
from medmerge.selection.racing import (
    DirRangeCache,
    MemoryRangeCache,
    Objective,
    RacingError,
    RacingPlan,
    Stratum,
    dominators,
    objective_bounds,
    race,
)

# Two objectives, one stratum of 8 documents each; rounds score 4 then 8 documents per stratum.
PLAN = RacingPlan(strata=(Stratum("x", 8), Stratum("y", 8)),
                  objectives=(Objective("X", {"x": 1.0}), Objective("Y", {"y": 1.0})), first=4, growth=2.0,
                  bounds="marginal")
PAIRED = RacingPlan(**{**PLAN.__dict__, "bounds": "paired"})
# Score streams in race order (position 0 is the first document the race scores).
GOOD = [1, 1, 1, 1, 1, 1, 1, 0]
BAD = [0, 0, 0, 0, 0, 0, 1, 0]
MID = [1, 0, 1, 0, 1, 1, 0, 0]


def streams(table):
    """A scorer reading ``table[candidate][stratum]`` at the range's positions, and its call log."""
    calls = []

    def scorer(candidate, docs):
        calls.append((candidate, docs.stratum, docs.start, docs.stop))
        return table[candidate][docs.stratum][docs.start:docs.stop]

    return scorer, calls


TABLE = {"good": {"x": GOOD, "y": GOOD}, "bad": {"x": BAD, "y": BAD}, "mid": {"x": MID, "y": MID}}

# By hand, round 1 (4 of 8 documents, finite-population factor 1 - 4/8 = 1/2):
# z = Φ⁻¹(1 − 0.05 / (2 · 3 candidates · 2 objectives · 1 look)) = Φ⁻¹(1 − 0.05/12) ≈ 2.638.
Z = NormalDist().inv_cdf(1 - 0.05 / 12)
# good: 1,1,1,1 -> mean 1, s² = 0, shrunk ṽ = (4·0 + 2·¼) / (4 + 2) = 1/12, se² = ṽ · ½ / 4 = 1/96.
HW_GOOD = Z * math.sqrt(1 / 96)            # ≈ 0.2693: good's lower bound 0.7307 on X and Y
# bad: 0,0,0,0 -> the same width: upper bound 0.2693 < 0.7307 on both: bad stops after round 1.
# mid: 1,0,1,0 -> mean ½, s² = (2 − 4·¼)/3 = 1/3, ṽ = (4/3 + ½)/6 = 11/36, se² = 11/36 · ½ / 4 = 11/288.
HW_MID = Z * math.sqrt(11 / 288)           # ≈ 0.5156: upper bound 1.0156 ≥ 0.7307: mid runs on.


def test_hand_made_streams_stop_as_worked_out_by_hand():
    assert Z == pytest.approx(2.638, abs=1e-3) and PLAN.z(3) == pytest.approx(Z)
    seen = {}
    scorer, calls = streams(TABLE)
    res = race(PLAN, ["good", "bad", "mid"], scorer,
               on_round=lambda r, part: seen.setdefault(r, {c.name: (c.estimate, c.half_width) for c in part.candidates}))
    assert seen[1]["good"][1] == pytest.approx((HW_GOOD, HW_GOOD))
    assert seen[1]["mid"] == (pytest.approx((0.5, 0.5)), pytest.approx((HW_MID, HW_MID)))
    good, bad, mid = res.candidates
    assert (bad.stopped_round, bad.dominator) == (1, "good")
    assert bad.documents == {"x": 4, "y": 4} and "stopped after round 1 (8 documents): good" in bad.reason
    # round 2 is every document: bounds are exact (good 7/8, mid 4/8 on both); mid is dominated only now,
    # and no round follows, so it survives with its full scores, as does good
    assert not good.stopped and not mid.stopped
    assert res.scores() == {"good": {"X": 7 / 8, "Y": 7 / 8}, "mid": {"X": 0.5, "Y": 0.5}}
    assert res.documents_used == 16 + 8 + 16 and res.documents_full == 48
    # bad's last four documents were never scored
    assert ("bad", "x", 4, 8) not in calls and ("good", "x", 4, 8) in calls


def test_eps_keeps_a_candidate_within_eps_of_the_frontier():
    # two candidates: z = Φ⁻¹(1 − 0.05/8) ≈ 2.498, half-width 2.498·√(1/96) ≈ 0.2549 for both after round 1,
    # so good's lower bound 0.7451 clears bad's upper bound 0.2549 by 0.4902: bad stops after round 1 iff eps < 0.4902
    hw = NormalDist().inv_cdf(1 - 0.05 / 8) * math.sqrt(1 / 96)
    assert 1 - 2 * hw == pytest.approx(0.4902, abs=1e-4)
    for eps, stops in ((0.0, True), (0.48, True), (0.495, False), (0.5, False)):
        plan = RacingPlan(**{**PLAN.__dict__, "eps": eps})
        res = race(plan, ["good", "bad"], streams(TABLE)[0])
        assert (res.candidates[1].stopped_round == 1) is stops, eps
    assert res.candidates[1].reason == "evaluated on every document"
    assert "by at least 0.48, 0.48" in race(RacingPlan(**{**PLAN.__dict__, "eps": 0.48}), ["good", "bad"],
                                             streams(TABLE)[0]).candidates[1].reason
    # at full scores good − bad = 7/8 − 1/8 = 0.75 > 0.5, so the selection itself drops bad from the near set:
    # racing kept it only because round 1 could not show that
    full = [pareto.ScoredPoint(name=n, x=v["X"], y=v["Y"]) for n, v in res.scores().items()]
    assert [p.name for p in pareto.near_frontier(full, eps=0.5)] == ["good"]
    # with stderrs in the shift, the margin grows by √2 · the largest full-suite stderr, √(¼/7) ≈ 0.189
    plan = RacingPlan(**{**PLAN.__dict__, "eps": 0.3, "use_stderr": True})
    assert plan.shifts() == pytest.approx([0.3 + math.sqrt(2 * 0.25 / 7)] * 2)
    assert race(plan, ["good", "bad"], streams(TABLE)[0]).candidates[1].stopped_round is None


def test_paired_bounds_on_hand_made_streams():
    # paired: one lower bound per ordered pair, z = Φ⁻¹(1 − 0.05 / (3·2 pairs · 2 objectives · 1 look)) ≈ 2.638.
    # good − bad over round 1's documents: 1,1,1,1 -> mean 1, s² = 0, shrunk towards the largest variance of a
    # difference, (1 − (−1))²/4 = 1: ṽ = (0 + 2·1)/6 = 1/3, se² = ṽ · ½ / 4 = 1/24, half-width ≈ 0.5385:
    # lower bound 0.4615 > 0 on X and Y -> bad stops, dominated by good.
    # mid − bad: 1,0,1,0 -> mean ½, ṽ = (4/3 + 2)/6 = 5/9, se² = 5/72, half-width ≈ 0.6952: lower bound < 0.
    assert PAIRED.z(3) == pytest.approx(Z)
    hw = Z * math.sqrt(1 / 24)
    scorer, calls = streams(TABLE)
    res = race(PAIRED, ["mid", "good", "bad"], scorer)
    mid, good, bad = res.candidates
    assert (bad.stopped_round, bad.dominator) == (1, "good") and not mid.stopped and not good.stopped
    assert bad.reason == (f"stopped after round 1 (8 documents): good minus it is X 1.0000±{hw:.4f}, "
                          f"Y 1.0000±{hw:.4f}: lower bounds at least 0, 0 on every objective")
    assert res.record()["bounds"] == "paired" and len(calls) == 10


def test_one_objective_is_not_enough_to_stop():
    # better on X by far, worse on Y: neither dominates the other, nobody stops
    table = {"a": {"x": GOOD, "y": BAD}, "b": {"x": BAD, "y": GOOD}}
    res = race(PLAN, ["a", "b"], streams(table)[0])
    assert all(not c.stopped for c in res.candidates)


def test_equal_candidates_never_stop_each_other():
    table = {"a": {"x": MID, "y": MID}, "b": {"x": MID, "y": MID}}
    res = race(PLAN, ["a", "b"], streams(table)[0])
    assert [c.stopped for c in res.candidates] == [False, False]


def test_dominators_rule_on_bounds():
    upper = np.array([[0.5, 0.5], [0.9, 0.2], [0.6, 0.6]])
    lower = np.array([[0.4, 0.4], [0.7, 0.1], [0.5, 0.5]])
    # p=0: q=2's lower (0.5, 0.5) equals p's upper on both, not strictly beyond on either -> kept
    assert list(dominators(lower, upper, np.zeros(2))) == [-1, -1, -1]
    lower[2] = [0.5, 0.55]     # now beyond on Y, equal on X -> p=0 stops, dominated by 2
    assert list(dominators(lower, upper, np.zeros(2))) == [2, -1, -1]
    assert list(dominators(lower, upper, np.array([0.0, 0.1]))) == [-1, -1, -1]
    # a batch axis broadcasts
    assert dominators(np.stack([lower, lower]), np.stack([upper, upper]), np.zeros(2)).tolist() == [[2, -1, -1]] * 2


def test_objective_bounds_weigh_strata_and_vanish_on_full_strata():
    plan = RacingPlan(strata=(Stratum("a", 10), Stratum("b", 4)),
                      objectives=(Objective("avg", {"a": 0.5, "b": 0.5}),), first=4)
    n, s1, s2 = np.array([[4, 4]]), np.array([[2, 3]]), np.array([[2, 3]])
    est, half = objective_bounds(n, s1, s2, plan, z=2.0)
    # b is complete (4 of 4): no variance; a: s² = (2 − 4·¼)/3 = 1/3, ṽ = (4/3 + ½)/6 = 11/36, FPC 6/10
    assert est[0, 0] == pytest.approx(0.5 * 0.5 + 0.5 * 0.75)
    assert half[0, 0] == pytest.approx(2.0 * math.sqrt(0.25 * 11 / 36 * 0.6 / 4))


def test_schedule_counts_the_same_documents_per_task_until_each_runs_out():
    plan = RacingPlan(strata=(Stratum("small", 80), Stratum("big", 3346)),
                      objectives=(Objective("m", {"small": 0.5, "big": 0.5}),), first=32)
    assert plan.schedule()[:, 0].tolist() == [32, 64, 80, 80, 80, 80, 80, 80]
    assert plan.schedule()[:, 1].tolist() == [32, 64, 128, 256, 512, 1024, 2048, 3346]
    assert plan.z(22) == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / (22 * 21 * 1 * 7)))   # paired: ordered pairs
    marginal = RacingPlan(**{**plan.__dict__, "bounds": "marginal"})
    assert marginal.z(22) == pytest.approx(NormalDist().inv_cdf(1 - 0.05 / (2 * 22 * 1 * 7)))   # 2 sides each


def test_the_order_is_seeded_shared_and_a_permutation():
    a, b = PLAN.order("x"), RacingPlan(**PLAN.__dict__).order("x")
    assert sorted(a.tolist()) == list(range(8)) and a.tolist() == b.tolist()
    assert RacingPlan(**{**PLAN.__dict__, "seed": 1}).order("x").tolist() != a.tolist() or \
        RacingPlan(**{**PLAN.__dict__, "seed": 2}).order("x").tolist() != a.tolist()


def test_cache_is_reused_across_rounds_and_reruns(tmp_path):
    scorer, calls = streams(TABLE)
    cache = DirRangeCache(tmp_path)
    first = race(PAIRED, ["good", "bad", "mid"], scorer, cache)
    # each (candidate, stratum, range) scored once: 3 candidates x 2 strata in round 1, 2 survivors x 2 in round 2
    assert len(calls) == len(set(calls)) == 10
    assert {(s, e) for _, _, s, e in calls} == {(0, 4), (4, 8)}
    again, calls2 = streams(TABLE)
    second = race(PAIRED, ["good", "bad", "mid"], again, DirRangeCache(tmp_path))
    assert calls2 == [] and second.record() == first.record()
    # a full evaluation is the union of the cached ranges: good's scores, read back from the cache
    full = [v for s, e in ((0, 4), (4, 8)) for v in cache.get("good", _range(PAIRED, "x", s, e))]
    assert full == [float(v) for v in GOOD]


def _range(plan, stratum, start, stop):
    from medmerge.selection.racing import DocRange

    order = plan.order(stratum)
    return DocRange(stratum, start, stop, plan.seed, tuple(int(d) for d in order[start:stop]))


def test_a_kill_between_rounds_resumes_from_the_cache(tmp_path):
    class Killed(Exception):
        pass

    def kill(r, _):
        if r == 1:
            raise Killed("killed after round 1")

    scorer, calls = streams(TABLE)
    with pytest.raises(Killed, match="after round 1"):
        race(PAIRED, ["good", "bad", "mid"], scorer, DirRangeCache(tmp_path), on_round=kill)
    assert len(calls) == 6
    resumed_scorer, resumed_calls = streams(TABLE)
    resumed = race(PAIRED, ["good", "bad", "mid"], resumed_scorer, DirRangeCache(tmp_path))
    # round 1 came from the cache; only round 2's ranges of the two survivors were scored
    assert sorted(resumed_calls) == [("good", "x", 4, 8), ("good", "y", 4, 8), ("mid", "x", 4, 8), ("mid", "y", 4, 8)]
    assert resumed.record() == race(PAIRED, ["good", "bad", "mid"], streams(TABLE)[0]).record()


def test_a_damaged_cache_file_is_scored_again(tmp_path):
    race(PLAN, ["good"], streams(TABLE)[0], DirRangeCache(tmp_path))
    for f in tmp_path.rglob("*.json"):
        f.write_text("{not json")
    scorer, calls = streams(TABLE)
    assert race(PLAN, ["good"], scorer, DirRangeCache(tmp_path)).scores() == {"good": {"X": 7 / 8, "Y": 7 / 8}}
    assert len(calls) == 4


def test_memory_cache_counts_hits():
    cache = MemoryRangeCache()
    race(PLAN, ["good"], streams(TABLE)[0], cache)
    race(PLAN, ["good"], streams(TABLE)[0], cache)
    assert (cache.hits, cache.misses) == (4, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"strata": ()}, "at least one stratum"),
    ({"strata": (Stratum("x", 0), Stratum("y", 8))}, "'x' has 0 documents"),
    ({"objectives": (Objective("X", {"z": 1.0}),)}, "unknown strata: z"),
    ({"objectives": (Objective("X", {"x": -1.0}),)}, "positive finite weights"),
    ({"confidence": 1.0}, "confidence is 1.0"),
    ({"growth": 1.0}, "growth is 1.0"),
    ({"eps": -0.1}, "eps is -0.1"),
    ({"bounds": "both"}, "bounds is 'both'; use 'paired' or 'marginal'"),
    ({"first": 1}, "first is 1"),
])
def test_bad_plans_are_refused(kwargs, match):
    with pytest.raises(RacingError, match=match):
        RacingPlan(**{**PLAN.__dict__, **kwargs})


def test_a_scorer_giving_the_wrong_values_is_named():
    with pytest.raises(RacingError, match=r"scorer gave \(3,\) values for good on x \[0, 4\)"):
        race(PLAN, ["good"], lambda c, d: [1, 1, 1])
    with pytest.raises(RacingError, match=r"outside \[0.0, 1.0\] for good on x"):
        race(PLAN, ["good"], lambda c, d: [2] * (d.stop - d.start))
    with pytest.raises(RacingError, match="unique names"):
        race(PLAN, ["good", "good"], streams(TABLE)[0])


def test_a_search_adds_trials_one_by_one_and_each_races_the_earlier_ones():
    from medmerge.selection.racing import Racer

    scorer, calls = streams(TABLE)
    racer = Racer(PAIRED, scorer, capacity=3)
    [good] = racer.add(["good"])          # alone: nobody to lose to, scored on every document
    assert not good.stopped and good.documents_used == 16
    [bad] = racer.add(["bad"])            # against good's 8 documents: stops after its first 4 (as by hand above)
    assert (bad.stopped_round, bad.dominator, bad.documents_used) == (1, "good", 8)
    [mid] = racer.add(["mid"])
    assert not mid.stopped and racer.result.scores() == {"good": {"X": 7 / 8, "Y": 7 / 8}, "mid": {"X": 0.5, "Y": 0.5}}
    assert racer.z == pytest.approx(Z) and len(calls) == 4 + 2 + 4
    with pytest.raises(RacingError, match="4 candidates would race; this race was planned .* for at most 3"):
        racer.add(["late"])
    with pytest.raises(RacingError, match="must be new, unique names"):
        racer.add(["good"])


def test_a_prior_variance_replaces_the_range_in_the_shrinkage():
    plan = RacingPlan(strata=(Stratum("loss", 10, low=-20.0, high=0.0, prior_variance=0.04),),
                      objectives=(Objective("-loss", {"loss": 1.0}),), first=4)
    n, s1, s2 = np.array([[4]]), np.array([[-8.0]]), np.array([[16.0]])       # four documents at -2.0
    _, half = objective_bounds(n, s1, s2, plan, z=1.0)
    assert half[0, 0] == pytest.approx(math.sqrt((2 * 0.04 / 6) * 0.6 / 4))   # not (2 · 100 / 6) from the range


def test_survivors_give_full_evaluations_near_set_and_knee():
    # six candidates on a trade-off plus four clearly dominated ones, 0/1 outcomes on 400 documents a stratum
    rng = np.random.default_rng(7)
    true = {f"front{i}": (0.2 + 0.12 * i, 0.85 - 0.12 * i) for i in range(6)}
    true |= {f"poor{i}": (0.15 + 0.1 * i, 0.2) for i in range(4)}
    plan = RacingPlan(strata=(Stratum("x", 400), Stratum("y", 400)),
                      objectives=(Objective("X", {"x": 1.0}), Objective("Y", {"y": 1.0})), first=25, eps=0.01)
    table = {c: {"x": (rng.random(400) < px).astype(float), "y": (rng.random(400) < py).astype(float)}
             for c, (px, py) in true.items()}
    res = race(plan, list(true), streams(table)[0])
    full = [pareto.ScoredPoint(name=c, x=t["x"].mean(), y=t["y"].mean()) for c, t in table.items()]
    kept = [p for p in full if p.name in res.scores()]
    assert {c.name for c in res.candidates if c.stopped} == {f"poor{i}" for i in range(4)}
    # the nearer a poor one is to the frontier, the later it stops (of 800 documents each)
    assert [c.documents_used for c in res.candidates if c.stopped] == [100, 200, 200, 400]
    for a, b in ((pareto.select(full, eps=0.01), pareto.select(kept, eps=0.01)),):
        assert [p.name for p in a.near] == [p.name for p in b.near] and a.knee.name == b.knee.name
    assert res.scores()["front0"] == {"X": table["front0"]["x"].mean(), "Y": table["front0"]["y"].mean()}
