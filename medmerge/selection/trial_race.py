"""Racing a search's trials by the hypervolume they can still add.

A sweep is raced (:mod:`medmerge.selection.racing`) so that its near set comes out exactly as full
evaluation's: a candidate stops only when another one beats it with high family-wise confidence, and
nearly every candidate near the frontier is scored in full. A search asks something else of its
evaluations: as much hypervolume as possible per document. A trial is worth finishing only if it can
still add a material area to the frontier of the trials already scored in full; one that cannot is
a poor trial, and it should cost a fraction of a full evaluation. So:

* **Estimates by control variates.** All trials read the same documents in the same seeded order, and the
  references (the parents, free: they define the hypervolume's reference point; then every trial scored
  in full) are known on every document. A trial's full-suite score on objective j is estimated from each
  reference f as ``score_j(f) + mean_j(trial − f)`` over the documents the trial has seen, with the
  paired stderr of :func:`medmerge.selection.racing.paired_bounds` (finite-population correction; the plain
  sample variance unless ``kappa`` pseudo-documents are asked for): merges of the same parents get the same documents right and wrong, so the
  difference is known far better than the score itself. The reference giving the narrowest interval
  is used, per objective.
* **Stop when the optimistic point adds too little.** After each round a trial's *upper* corner (estimate +
  z · stderr on each objective, ``z = Φ⁻¹(confidence)``, one-sided, per trial) is placed against the
  frontier of the trials scored in full; if even that corner adds less than ``min_gain`` of the ideal box
  (the box between the reference point and the best parent on each objective), the trial stops and is
  told its estimates. No Bonferroni correction: a wrong stop here costs some hypervolume, not the
  correctness of a selection (the sweep's race keeps that guarantee), and the search's budget is better
  spent on trials than on width.
* **A pool, best first.** Trials raced together (the warm-start grid) are all screened on round 1; then the
  one whose *estimated* point adds the most is taken one round further, and so on, so the best trials
  are finished first and set the frontier the others must beat.

Every trial that reaches the frontier does so on every document; only finished trials count in
:meth:`TrialRace.hypervolume`. Pure Python and numpy; no Optuna, MLflow or ZenML.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from medmerge.selection.pareto import ScoredPoint, hypervolume
from medmerge.selection.racing import (
    CandidateRace,
    MemoryRangeCache,
    RacingError,
    RacingPlan,
    RangeCache,
    Scorer,
    checked_values,
    doc_range,
    paired_bounds,
)


@dataclass(frozen=True)
class Decision:
    """A trial's end: its course, the documents the whole search had spent then, and the hypervolume of the
    trials finished so far (a point of the hypervolume-against-cost curve)."""

    course: CandidateRace
    spent: int
    hypervolume: float


@dataclass
class _Entry:
    """A trial in the pool: its values so far (race order, per stratum), its next round and its last gains."""

    name: str
    seen: list[np.ndarray]
    round: int = 0
    est_gain: float = 0.0
    upper_gain: float = 0.0


class TrialRace:
    """Race trials, one pool at a time, against the frontier of the trials finished before them (module
    docstring). ``plan``: strata, the two objectives, the rounds (``first``, ``growth``) and the document
    order (``seed``); its ``confidence``, ``eps``, ``use_stderr`` and ``bounds`` are the sweep's and are not used
    here, nor its ``kappa`` (``kappa`` here: the pseudo-documents of the paired variance, 0 by default).
    ``references``: ``{name: values per stratum, in document-index order}`` scored in full beforehand (the
    parents); they set the reference point (the worse on each objective) and the ideal box, and are not
    counted as spent. ``scorer(name, DocRange)`` returns one value per document of the range; ranges are
    cached in ``cache``."""

    def __init__(self, plan: RacingPlan, scorer: Scorer, references: dict[str, Sequence[Sequence[float]]], *,
                 confidence: float = 0.8, min_gain: float = 0.005, kappa: float = 0.0,
                 cache: RangeCache | None = None):
        if len(plan.objectives) != 2:
            raise RacingError(f"a hypervolume race needs two objectives, not {len(plan.objectives)}")
        if not 0 < confidence < 1:
            raise RacingError(f"confidence is {confidence!r}; it must be in (0, 1)")
        if not (math.isfinite(min_gain) and 0 <= min_gain < 1):
            raise RacingError(f"min_gain is {min_gain!r}; it must be a share of the ideal box in [0, 1)")
        if len(references) < 1:
            raise RacingError("a hypervolume race needs at least one reference scored in full (the parents)")
        if not (math.isfinite(kappa) and kappa >= 0):
            raise RacingError(f"kappa is {kappa!r}; it must be a finite number >= 0")
        self.plan, self.scorer = plan, scorer
        self._paired_plan = dataclasses.replace(plan, kappa=kappa)
        self.cache = cache if cache is not None else MemoryRangeCache()
        self.z = NormalDist().inv_cdf(confidence)
        self.confidence, self.min_gain = confidence, min_gain
        self.sched = plan.schedule()
        self.orders = [plan.order(s.name) for s in plan.strata]
        self.full: dict[str, list[np.ndarray]] = {}      # values in race order, every document
        self.scores: dict[str, np.ndarray] = {}          # their objectives (O,)
        self.finished: list[ScoredPoint] = []            # trials scored in full (not the references)
        self._hypervolume = 0.0                          # of ``finished``
        self.spent = 0
        self.decisions: list[Decision] = []
        for name, per_stratum in references.items():
            vals = [np.asarray(v, dtype=float) for v in per_stratum]
            if [len(v) for v in vals] != [s.size for s in plan.strata]:
                raise RacingError(f"reference {name!r} needs every document of every stratum")
            self.full[name] = [v[o] for v, o in zip(vals, self.orders)]
            self.scores[name] = self._objectives(self.full[name])
        ref_scores = np.array(list(self.scores.values()))
        self.reference = (float(ref_scores[:, 0].min()), float(ref_scores[:, 1].min()))
        ideal = ref_scores.max(axis=0)
        self.box = float((ideal[0] - self.reference[0]) * (ideal[1] - self.reference[1]))
        self.threshold = self.min_gain * self.box

    # -- geometry --
    def _objectives(self, per_stratum: list[np.ndarray]) -> np.ndarray:
        return self.plan.weights @ np.array([v.mean() for v in per_stratum])

    def hypervolume(self) -> float:
        """Hypervolume of the trials finished so far (every document), against the parents' reference point."""
        return self._hypervolume

    def gain(self, point: Sequence[float]) -> float:
        """What ``point`` (x, y) would add to :meth:`hypervolume`."""
        pts = [*self.finished, ScoredPoint(name="probe", x=float(point[0]), y=float(point[1]))]
        return hypervolume(pts, reference=self.reference) - self._hypervolume

    # -- estimates --
    def bounds(self, seen: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(estimate, upper)`` (O,) of a trial's full-suite scores from its values ``seen`` (race order, a prefix
        per stratum), by the narrowest control variate among the references and finished trials."""
        n = np.array([len(v) for v in seen], dtype=float)
        names = list(self.full)
        d1 = np.array([[(v - self.full[f][s][:len(v)]).sum() for s, v in enumerate(seen)] for f in names])
        d2 = np.array([[((v - self.full[f][s][:len(v)]) ** 2).sum() for s, v in enumerate(seen)] for f in names])
        diff, half = paired_bounds(np.broadcast_to(n, d1.shape), d1, d2, self._paired_plan, self.z)   # (R, O)
        base = np.array([self.scores[f] for f in names])
        best = half.argmin(axis=0)
        cols = np.arange(half.shape[1])
        est = base[best, cols] + diff[best, cols]
        return est, est + half[best, cols]

    # -- the race --
    def _advance(self, entry: _Entry) -> None:
        """Score ``entry`` on its next round's new documents."""
        target = self.sched[entry.round]
        for s, st in enumerate(self.plan.strata):
            start, stop = len(entry.seen[s]), int(target[s])
            if stop <= start:
                continue
            docs = doc_range(self.plan, s, self.orders[s], start, stop)
            got = self.cache.get(entry.name, docs)
            if got is None:
                got = checked_values(st, entry.name, docs, self.scorer(entry.name, docs))
                self.cache.put(entry.name, docs, got)
            entry.seen[s] = np.concatenate([entry.seen[s], got])
            self.spent += stop - start
        entry.round += 1

    def _decide(self, entry: _Entry, course: CandidateRace) -> None:
        course.documents = {st.name: len(v) for st, v in zip(self.plan.strata, entry.seen)}
        self.decisions.append(Decision(course, self.spent, self.hypervolume()))

    def race(self, names: Sequence[str]) -> list[CandidateRace]:
        """Race ``names`` as one pool (module docstring); returns their courses in the order given. A finished
        trial joins the frontier (and the references) before the next decision."""
        names = list(names)
        if len(set(names)) != len(names) or set(names) & set(self.full):
            raise RacingError(f"trial names must be new and unique: {names}")
        courses = {n: CandidateRace(n) for n in names}
        pool = [_Entry(n, [np.zeros(0) for _ in self.plan.strata]) for n in names]
        for entry in pool:
            self._advance(entry)
        sizes = self.plan.sizes
        while pool:
            live = []
            for entry in pool:          # the finished join the frontier before anyone's gain is weighed
                course = courses[entry.name]
                if all(len(v) == n for v, n in zip(entry.seen, sizes)):
                    scores = self._objectives(entry.seen)
                    course.estimate, course.half_width = tuple(map(float, scores)), (0.0,) * len(scores)
                    self.full[entry.name], self.scores[entry.name] = entry.seen, scores
                    self.finished.append(ScoredPoint(name=entry.name, x=float(scores[0]), y=float(scores[1])))
                    self._hypervolume = hypervolume(self.finished, reference=self.reference)
                    self._decide(entry, course)
                else:
                    live.append(entry)
            for entry in live:
                course = courses[entry.name]
                est, upper = self.bounds(entry.seen)
                course.estimate, course.half_width = tuple(map(float, est)), tuple(map(float, upper - est))
                entry.est_gain, entry.upper_gain = self.gain(course.estimate), self.gain(tuple(map(float, upper)))
            pool = []
            for entry in live:
                if entry.upper_gain < self.threshold:
                    course = courses[entry.name]
                    course.stopped_round = entry.round
                    bounds = ", ".join(f"{o.name} ≤ {u:.4g}" for o, u in
                                       zip(self.plan.objectives, np.add(course.estimate, course.half_width)))
                    course.reason = (f"stopped after round {entry.round}: at {self.confidence:.0%} ({bounds}) it "
                                     f"adds at most {entry.upper_gain:.4g} to the hypervolume, under "
                                     f"{self.min_gain:.2%} of the ideal box ({self.threshold:.4g})")
                    self._decide(entry, course)
                else:
                    pool.append(entry)
            if pool:
                self._advance(max(pool, key=lambda e: (e.est_gain, e.upper_gain)))
        return [courses[n] for n in names]


__all__ = ["Decision", "TrialRace"]
