"""Racing: evaluate a sweep's candidates on growing batches of documents and stop those that cannot
reach the near-frontier any more.

Full evaluation scores every candidate on every document. Racing scores all of them on the first
documents of one fixed, seeded order (shared by all candidates), then on more, round by round; after
each round a candidate whose *upper* confidence bound is beaten, on every objective, by some other
candidate's *lower* bound by more than the near set's margin stops. Survivors run until their
documents run out, so every candidate that reaches the frontier, the picks and promotion does so with
its full-suite scores. Pure Python and numpy; no MLflow, no ZenML.

What a score is (and what the bounds bound)
    Documents fall into *strata* (one per task); each document gives one value in ``[low, high]``
    (an accuracy: 0 or 1). An objective is a weighted sum of stratum means,
    ``score_j = Σ_s w_js · mean_{d∈s} y_d``: Medical Avg is ``w = 1/10`` on each clinical task; IF
    score is one stratum of prompts with ``y_i = (strict_i + followed_i / k̄) / 2``, where ``k̄`` is the
    mean number of instructions per prompt over the whole set (known before anything runs), which
    makes the instruction-level accuracy ``Σ followed / Σ k`` an exact mean over prompts. The target
    of every bound is the *full-suite* score of this candidate on these documents, not a population
    accuracy: the documents of a stratum are a prefix of a random permutation, i.e. a sample drawn
    without replacement from the N documents, so the finite-population correction ``(1 − n/N)``
    applies and a fully evaluated stratum is known exactly.

Rounds
    Round r scores, in every stratum, the first ``min(N_s, ⌈first · growth^r⌉)`` documents of that
    stratum's order: the same *count* per task, not the same fraction. Medical Avg weighs its tasks
    equally, so its variance ``Σ w² σ²_s (1 − n_s/N_s) / n_s`` is spent equally by equal counts
    (Neyman allocation with equal weights and similar σ), and the small tasks (MMLU's 80–218
    question subjects), which carry nearly all of Medical Avg's uncertainty, are finished first,
    while the large ones (MedMCQA's 3,346) are sampled. Geometric growth keeps the number of rounds,
    and so of looks at the data, small (``R ≈ log₂(N_max / first)``).

Confidence bounds, and why these
    ``score_j ± z · se_j`` with ``se_j² = Σ_s w_js² · ṽ_s · (1 − n_s/N_s) / n_s``: the score's stderr
    (lm-eval's, with the finite-population correction), so "stderr-aware". ``ṽ_s`` is the sample
    variance shrunk towards the largest variance a value in ``[low, high]`` can have,
    ``ṽ = (n·s² + κ·(high − low)²/4) / (n + κ)`` with ``κ = 2`` pseudo-documents (the add-two idea of
    Agresti–Coull): a first batch that is all right or all wrong does not give a zero-width interval.
    (A stratum of continuous values, such as per-document losses, names its own ``prior_variance``.)
    The level: every bound of every candidate, objective and round must hold at once for the
    guarantee below, so the family-wise error δ = 1 − ``confidence`` (default 0.05) is split by
    Bonferroni over candidates × objectives × rounds × 2 sides: ``z = Φ⁻¹(1 − δ / (2·C·O·R))``
    (C = 22, O = 2 and R = 7 looks, the rounds of 32 … 2,048 documents per task before the last, whose
    bounds are exact: z ≈ 3.8). Bonferroni because it holds whatever the dependence between
    candidates (merges of one pair of parents answer the same documents alike) and between rounds
    (nested prefixes); the rounds are few and fixed in advance, so the union over them costs only
    ``√(2 ln R)``-ish in z, where an anytime-valid confidence sequence pays for arbitrarily many looks
    it is never given. The normal approximation is checked at scale by
    ``benchmarks/racing_simulation.py`` (1,000 races against full evaluation of the same draws).

Paired bounds (the default, ``bounds="paired"``)
    All candidates read the same documents in the same order, so the rule can bound the difference
    ``score_j(q) − score_j(p)`` directly, over the two candidates' common documents, with the same
    formula on the per-document differences (range ``±(high − low)``): p stops when that lower bound
    clears ``shift_j`` on every objective. ``var(q − p) = var q + var p − 2 cov``: never wider than
    the two marginal intervals put together (their half-widths add; the paired one adds variances),
    and far narrower when merges of one pair of parents get the same documents right and wrong. The
    Bonferroni count becomes one lower bound per ordered pair: ``z = Φ⁻¹(1 − δ / (C·(C−1)·O·R))``
    (C = 22: z ≈ 4.3; the larger count costs less than the pairing gains). ``bounds="marginal"``
    is the per-candidate rule, ``lower_q ≥ upper_p + shift`` (each interval printable on its own).

Stopping rule, and why it keeps the near set
    With ``shift_j = ε + (use_stderr ? √2 · se_max_j : 0)`` (``se_max_j`` an upper bound on any
    candidate's full-suite stderr, so the shift is never smaller than the one
    :func:`medmerge.selection.pareto.near_frontier` will use), p stops after a round when some q (running or
    stopped: a stopped candidate's last bounds stay valid) has ``lower_q,j ≥ upper_p,j + shift_j`` on
    every objective j, strictly on at least one: then, when the bounds hold, q's full scores dominate
    p's shifted by ``shift``, i.e. p is outside ``near_frontier(ε)`` of the full evaluation.
    Conversely, a candidate within ε of the frontier is never stopped (while the bounds hold), and
    since far-domination chains end on the frontier (``shift(p, r) ≤ shift(p, q) + shift(q, r)``),
    removing far-dominated candidates changes neither the near set nor the frontier of the others,
    nor (a function of the frontier alone) the knee. So with probability ≥ ``confidence``, racing's
    near set and knee, computed on the survivors' full scores, equal full evaluation's.

Cache and resume
    Each round's new documents are scored as one range ``[start, stop)`` of a stratum's order, and
    results are cached per ``(candidate, stratum, order seed, start, stop)`` (:class:`RangeCache`);
    a later round reads the earlier ranges back, a rerun after a kill replays the finished rounds
    from the cache and scores only what is missing, and a full evaluation is the union of the ranges.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Protocol

import numpy as np

KAPPA = 2.0   # pseudo-documents of maximal variance added to each stratum's sample variance


class RacingError(ValueError):
    """A racing plan that cannot work: no strata, an objective over unknown strata, bad settings."""


# --- the plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stratum:
    """A task's documents: ``size`` of them, each scored by a value in ``[low, high]``."""

    name: str
    size: int
    low: float = 0.0
    high: float = 1.0
    prior_variance: float | None = None     # what the sample variance is shrunk towards; None: max_variance

    def max_variance(self) -> float:
        """The largest variance a value in ``[low, high]`` can have."""
        return (self.high - self.low) ** 2 / 4

    def shrink_target(self) -> float:
        return self.max_variance() if self.prior_variance is None else self.prior_variance


@dataclass(frozen=True)
class Objective:
    """``score = Σ_s weights[s] · mean of stratum s`` (maximised). ``max_stderr`` bounds the full-suite
    stderr of any candidate (used for the ``use_stderr`` shift); None: from the strata's value ranges."""

    name: str
    weights: Mapping[str, float]
    max_stderr: float | None = None


@dataclass(frozen=True)
class RacingPlan:
    """Strata, objectives and the racing settings (see the module docstring for each choice).

    ``first``: documents per stratum in round 1; ``growth``: factor per round; ``confidence``: the
    probability that every bound holds (so that the near set and knee come out right); ``eps`` and
    ``use_stderr``: the near set's margin, as in :func:`medmerge.selection.pareto.near_frontier`; ``seed``: the
    document order. (A search's trials are raced by the hypervolume they can add instead:
    :mod:`medmerge.selection.trial_race`.)"""

    strata: tuple[Stratum, ...]
    objectives: tuple[Objective, ...]
    first: int = 32
    growth: float = 2.0
    confidence: float = 0.95
    eps: float = 0.0
    use_stderr: bool = False
    seed: int = 0
    kappa: float = KAPPA
    bounds: str = "paired"

    def __post_init__(self):
        if not self.strata:
            raise RacingError("a racing plan needs at least one stratum of documents")
        names = [s.name for s in self.strata]
        if len(set(names)) != len(names):
            raise RacingError(f"stratum names repeat: {names}")
        for s in self.strata:
            if not (isinstance(s.size, int) and s.size >= 1):
                raise RacingError(f"stratum {s.name!r} has {s.size!r} documents; it needs at least 1")
            if not (math.isfinite(s.low) and math.isfinite(s.high) and s.high > s.low):
                raise RacingError(f"stratum {s.name!r}: value range [{s.low}, {s.high}] is empty or not finite")
        if not self.objectives:
            raise RacingError("a racing plan needs at least one objective")
        for o in self.objectives:
            unknown = sorted(set(o.weights) - set(names))
            if unknown:
                raise RacingError(f"objective {o.name!r} weighs unknown strata: {', '.join(unknown)}")
            if not o.weights or not all(math.isfinite(w) and w > 0 for w in o.weights.values()):
                raise RacingError(f"objective {o.name!r} needs positive finite weights")
        if not (isinstance(self.first, int) and self.first >= 2):
            raise RacingError(f"first is {self.first!r}; a round needs at least 2 documents per stratum")
        if not (math.isfinite(self.growth) and self.growth > 1):
            raise RacingError(f"growth is {self.growth!r}; it must be > 1")
        if not (0 < self.confidence < 1):
            raise RacingError(f"confidence is {self.confidence!r}; it must be in (0, 1)")
        if self.bounds not in ("paired", "marginal"):
            raise RacingError(f"bounds is {self.bounds!r}; use 'paired' or 'marginal'")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise RacingError(f"eps is {self.eps!r}; it must be a finite number >= 0")

    # -- derived arrays --
    @property
    def sizes(self) -> np.ndarray:
        return np.array([s.size for s in self.strata], dtype=np.int64)

    @property
    def weights(self) -> np.ndarray:
        """(O, S): objective j's weight on stratum s."""
        idx = {s.name: i for i, s in enumerate(self.strata)}
        w = np.zeros((len(self.objectives), len(self.strata)))
        for j, o in enumerate(self.objectives):
            for name, v in o.weights.items():
                w[j, idx[name]] = v
        return w

    @property
    def max_variances(self) -> np.ndarray:
        return np.array([s.max_variance() for s in self.strata])

    @property
    def shrink_targets(self) -> np.ndarray:
        return np.array([s.shrink_target() for s in self.strata])

    def schedule(self) -> np.ndarray:
        """(R, S): cumulative documents per stratum after each round; the last row is every document."""
        rows, k = [], float(self.first)
        sizes = self.sizes
        while True:
            row = np.minimum(sizes, math.ceil(k))
            rows.append(row)
            if (row == sizes).all():
                return np.array(rows)
            k *= self.growth

    def z(self, n_candidates: int) -> float:
        """Bonferroni over every bound the rule may use, R the rounds before the last (whose bounds are
        exact): marginal ``Φ⁻¹(1 − δ / (2 · C · O · R))`` (an upper and a lower bound per candidate),
        paired ``Φ⁻¹(1 − δ / (C · (C − 1) · O · R))`` (one lower bound per ordered pair)."""
        looks = max(1, len(self.schedule()) - 1)
        c = max(2, n_candidates)
        tests = (c * (c - 1) if self.bounds == "paired" else 2 * c) * len(self.objectives) * looks
        return NormalDist().inv_cdf(1 - (1 - self.confidence) / tests)

    def max_stderrs(self) -> np.ndarray:
        """(O,): an upper bound on any candidate's full-suite stderr per objective."""
        w, v, n = self.weights, self.max_variances, self.sizes
        default = np.sqrt((w ** 2 * v / np.maximum(n - 1, 1)).sum(axis=1))
        return np.array([o.max_stderr if o.max_stderr is not None else d for o, d in zip(self.objectives, default)])

    def shifts(self) -> np.ndarray:
        """(O,): how far q's lower bound must clear p's upper bound on each objective to stop p."""
        extra = math.sqrt(2) * self.max_stderrs() if self.use_stderr else 0.0
        return self.eps + np.zeros(len(self.objectives)) + extra

    def order(self, stratum: str) -> np.ndarray:
        """The stratum's documents in the race's order: a permutation of ``range(size)`` fixed by the
        seed and the stratum's name (the same for every candidate and every rerun)."""
        s = next(s for s in self.strata if s.name == stratum)
        return np.random.default_rng([self.seed, zlib.crc32(stratum.encode())]).permutation(s.size)

    def full_documents(self, n_candidates: int) -> int:
        return int(self.sizes.sum()) * n_candidates


# --- bounds and the stopping rule (array functions; leading axes broadcast) --------------------


def objective_bounds(n, s1, s2, plan: RacingPlan, z: float) -> tuple[np.ndarray, np.ndarray]:
    """``(estimate, half-width)``, each (..., C, O), from per-stratum sufficient statistics (..., C, S):
    ``n`` documents scored, ``s1 = Σ y``, ``s2 = Σ y²`` (the module docstring gives the formula)."""
    n = np.asarray(n, dtype=float)
    sizes, w = plan.sizes.astype(float), plan.weights
    safe = np.maximum(n, 1.0)
    mean = np.asarray(s1) / safe
    sample_var = np.maximum(np.asarray(s2) - safe * mean ** 2, 0.0) / np.maximum(n - 1, 1.0)
    shrunk = (n * sample_var + plan.kappa * plan.shrink_targets) / (n + plan.kappa)
    var_mean = shrunk * np.clip(1 - n / sizes, 0.0, 1.0) / safe
    est = mean @ w.T
    half = z * np.sqrt(var_mean @ (w ** 2).T)
    return est, half


def dominators(lower, upper, shift, candidates_mask=None) -> np.ndarray:
    """For each p (axis -2 of ``upper``), the first q with ``lower[q] ≥ upper[p] + shift`` on every objective
    and ``>`` on one; -1 where there is none. ``lower``/``upper`` (..., C, O), ``shift`` (O,).
    ``candidates_mask`` (..., C) limits which q may stop others (default: all)."""
    lower, upper = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    bar = upper[..., :, None, :] + shift                    # (..., p, 1, O)
    lq = lower[..., None, :, :]                             # (..., 1, q, O)
    beats = (lq >= bar).all(-1) & (lq > bar).any(-1)        # (..., p, q)
    return _first(beats, candidates_mask)


def _first(beats, candidates_mask=None) -> np.ndarray:
    """The first q with ``beats[..., p, q]`` (q ≠ p, q allowed by the mask) per p; -1 where none."""
    beats = beats & ~np.eye(beats.shape[-1], dtype=bool)
    if candidates_mask is not None:
        beats &= np.asarray(candidates_mask, dtype=bool)[..., None, :]
    return np.where(beats.any(-1), beats.argmax(-1), -1)


def paired_bounds(n, d1, d2, plan: RacingPlan, z: float) -> tuple[np.ndarray, np.ndarray]:
    """``(estimate, half-width)`` of ``score(q) − score(p)``, each (..., C_p, C_q, O), from the pairs' common
    documents per stratum (..., C_p, C_q, S): ``n`` of them, ``d1 = Σ (y_q − y_p)``, ``d2 = Σ (y_q − y_p)²``.
    The same formula as :func:`objective_bounds`, for differences (values in ``±(high − low)``)."""
    n = np.asarray(n, dtype=float)
    sizes, w = plan.sizes.astype(float), plan.weights
    safe = np.maximum(n, 1.0)
    mean = np.asarray(d1) / safe
    sample_var = np.maximum(np.asarray(d2) - safe * mean ** 2, 0.0) / np.maximum(n - 1, 1.0)
    shrunk = (n * sample_var + plan.kappa * 4 * plan.shrink_targets) / (n + plan.kappa)
    var_mean = shrunk * np.clip(1 - n / sizes, 0.0, 1.0) / safe
    return mean @ w.T, z * np.sqrt(var_mean @ (w ** 2).T)


def paired_dominators(lower_diff, shift, candidates_mask=None) -> np.ndarray:
    """For each p, the first q whose lower bound on ``score(q) − score(p)`` (``lower_diff`` (..., C_p, C_q, O))
    is ≥ ``shift`` on every objective and > on one; -1 where there is none."""
    ld = np.asarray(lower_diff, dtype=float)
    return _first((ld >= shift).all(-1) & (ld > shift).any(-1), candidates_mask)


def _pair_stats(values: list[np.ndarray], n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common-prefix statistics of every ordered pair: ``values[s]`` (C, N_s) holds each candidate's values in
    race order (beyond its ``n[c, s]`` documents: anything)."""
    C, S = n.shape
    npq, d1, d2 = np.zeros((C, C, S)), np.zeros((C, C, S)), np.zeros((C, C, S))
    for s, v in enumerate(values):
        for m in np.unique(n[:, s]):
            m = int(m)
            pairs = np.minimum(n[:, s][:, None], n[:, s][None, :]) == m
            if m == 0 or not pairs.any():
                continue
            head = v[:, :m]
            sums, squares = head.sum(1), (head ** 2).sum(1)
            cross = head @ head.T
            npq[..., s] = np.where(pairs, m, npq[..., s])
            d1[..., s] = np.where(pairs, sums[None, :] - sums[:, None], d1[..., s])
            d2[..., s] = np.where(pairs, squares[None, :] + squares[:, None] - 2 * cross, d2[..., s])
    return npq, d1, d2


# --- scoring and the cache --------------------------------------------------------------------


@dataclass(frozen=True)
class DocRange:
    """Positions ``[start, stop)`` of a stratum's race order, and the document indices they hold."""

    stratum: str
    start: int
    stop: int
    seed: int
    documents: tuple[int, ...]

    def key(self, candidate: str) -> str:
        blob = json.dumps([candidate, self.stratum, self.seed, self.start, self.stop, len(self.documents)])
        return hashlib.sha256(blob.encode()).hexdigest()


Scorer = Callable[[str, DocRange], Sequence[float]]   # (candidate, documents) -> one value per document
# (candidate, ranges of several strata) -> one sequence of values per range: a round's documents in one call
BatchScorer = Callable[[str, list[DocRange]], Sequence[Sequence[float] | np.ndarray]]


def doc_range(plan: RacingPlan, k: int, order: np.ndarray, start: int, stop: int) -> DocRange:
    """Positions ``[start, stop)`` of stratum ``k``'s race order ``order`` (:meth:`RacingPlan.order`)."""
    return DocRange(plan.strata[k].name, start, stop, plan.seed, tuple(int(d) for d in order[start:stop]))


def checked_values(stratum: Stratum, candidate: str, docs: DocRange, got) -> np.ndarray:
    """A scorer's values for ``docs`` as an array, refused (:class:`RacingError`) unless there is one finite value
    per document, each in the stratum's ``[low, high]``."""
    v = np.asarray(got, dtype=float)
    if v.shape != (docs.stop - docs.start,) or not np.isfinite(v).all():
        raise RacingError(f"scorer gave {v.shape} values for {candidate} on {stratum.name} "
                          f"[{docs.start}, {docs.stop}); expected {docs.stop - docs.start} finite")
    if ((v < stratum.low) | (v > stratum.high)).any():
        raise RacingError(f"scorer gave a value outside [{stratum.low}, {stratum.high}] for {candidate} on "
                          f"{stratum.name}")
    return v


class RangeCache(Protocol):
    """Results per (candidate, document range); an evaluation cache implements these two methods."""

    def get(self, candidate: str, docs: DocRange) -> np.ndarray | None: ...

    def put(self, candidate: str, docs: DocRange, values: np.ndarray) -> None: ...


class MemoryRangeCache:
    def __init__(self):
        self.data: dict[str, np.ndarray] = {}
        self.hits = self.misses = 0

    def get(self, candidate, docs):
        v = self.data.get(docs.key(candidate))
        self.hits += v is not None
        self.misses += v is None
        return v

    def put(self, candidate, docs, values):
        self.data[docs.key(candidate)] = np.asarray(values, dtype=float)


class DirRangeCache(MemoryRangeCache):
    """One JSON file per (candidate, range) under ``root``, written atomically: a kill leaves whole files
    only, and a rerun reads them back."""

    def __init__(self, root: str | os.PathLike):
        super().__init__()
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, candidate, docs):
        try:
            rec = json.loads(self._path(docs.key(candidate)).read_text())
            values = np.asarray(rec["values"], dtype=float)
            if values.shape != (docs.stop - docs.start,):
                raise ValueError("wrong length")
        except (OSError, ValueError, KeyError, TypeError):
            self.misses += 1
            return None
        self.hits += 1
        return values

    def put(self, candidate, docs, values):
        from medmerge.io.atomic import write_text_atomic

        rec = {"candidate": candidate, "stratum": docs.stratum, "seed": docs.seed, "start": docs.start,
               "stop": docs.stop, "values": [float(v) for v in values]}
        write_text_atomic(self._path(docs.key(candidate)), json.dumps(rec))


# --- the race ---------------------------------------------------------------------------------


@dataclass
class CandidateRace:
    """One candidate's course: documents used per stratum, its last bounds, and why it stopped."""

    name: str
    documents: dict[str, int] = field(default_factory=dict)
    estimate: tuple[float, ...] = ()
    half_width: tuple[float, ...] = ()
    stopped_round: int | None = None
    dominator: str | None = None
    reason: str = "evaluated on every document"

    @property
    def stopped(self) -> bool:
        return self.stopped_round is not None

    @property
    def documents_used(self) -> int:
        return sum(self.documents.values())

    def record(self, documents_full: int) -> dict:
        """JSON-ready: documents used (of ``documents_full``, per stratum), whether and when it stopped, who
        stopped it and why."""
        return {"documents": self.documents_used, "documents_full": documents_full, "per_task": dict(self.documents),
                "stopped_round": self.stopped_round, "stopped": self.stopped, "dominator": self.dominator,
                "reason": self.reason}


@dataclass
class RaceResult:
    plan: RacingPlan
    candidates: list[CandidateRace]
    rounds: int
    z: float

    def survivors(self) -> list[CandidateRace]:
        return [c for c in self.candidates if not c.stopped]

    @property
    def documents_used(self) -> int:
        return sum(c.documents_used for c in self.candidates)

    @property
    def documents_full(self) -> int:
        return self.plan.full_documents(len(self.candidates))

    def scores(self) -> dict[str, dict[str, float]]:
        """``{candidate: {objective: full-suite score}}`` for the survivors (exact: every document)."""
        names = [o.name for o in self.plan.objectives]
        return {c.name: dict(zip(names, c.estimate)) for c in self.survivors()}

    def record(self) -> dict:
        """JSON-ready summary: the settings, and per candidate its documents and why it stopped."""
        return {"z": self.z, "rounds": self.rounds, "confidence": self.plan.confidence, "bounds": self.plan.bounds,
                "eps": self.plan.eps, "use_stderr": self.plan.use_stderr,
                "first": self.plan.first, "growth": self.plan.growth, "seed": self.plan.seed,
                "documents_used": self.documents_used, "documents_full": self.documents_full,
                "candidates": {c.name: c.record(int(self.plan.sizes.sum())) for c in self.candidates}}


def _fmt_bounds(names, est, half) -> str:
    return ", ".join(f"{n} {e:.4f}±{h:.4f}" for n, e, h in zip(names, est, half))


class Racer:
    """A race candidates can join over time: :func:`race` adds them all at once, a search adds its trials one by
    one (each then races against every candidate before it, finished or stopped, over their common documents).

    ``capacity`` is the most candidates that will ever race: the Bonferroni count (``plan.z``) is fixed by it,
    so adding more is refused. ``scorer(candidate, docs)`` returns one value per document of ``docs``; each new
    range is looked up in ``cache`` first and stored there once scored, so a rerun with the same cache replays
    finished rounds without scoring."""

    def __init__(self, plan: RacingPlan, scorer: Scorer | None = None, cache: RangeCache | None = None,
                 capacity: int = 2, batch: BatchScorer | None = None):
        if (scorer is None) == (batch is None):
            raise RacingError("give a racer one scorer: per range (scorer) or per round (batch)")
        self.plan, self.scorer, self.batch = plan, scorer, batch
        self.cache = cache if cache is not None else MemoryRangeCache()
        self.capacity = capacity
        self.sched = plan.schedule()
        self.z = plan.z(capacity)
        self.shift = plan.shifts()
        self.orders = {s.name: plan.order(s.name) for s in plan.strata}
        S, O = len(plan.strata), len(plan.objectives)
        self.names: list[str] = []
        self.n, self.s1, self.s2 = np.zeros((0, S)), np.zeros((0, S)), np.zeros((0, S))
        self.seen = [np.zeros((0, st.size)) for st in plan.strata]     # values in race order (paired bounds)
        self.lower, self.upper = np.zeros((0, O)), np.zeros((0, O))
        self.result = RaceResult(plan, [], 0, self.z)

    def _range(self, k: int, start: int, stop: int) -> DocRange:
        return doc_range(self.plan, k, self.orders[self.plan.strata[k].name], start, stop)

    def _scores(self, i: int, ranges: list[tuple[int, DocRange]]) -> list[np.ndarray]:
        """Candidate i's values on each range: from the cache, the rest scored (in one call with a batch scorer)."""
        name = self.names[i]
        values = [self.cache.get(name, docs) for _, docs in ranges]
        missing = [j for j, v in enumerate(values) if v is None]
        if missing:
            if self.batch is not None:
                scored = list(self.batch(name, [ranges[j][1] for j in missing]))
            else:
                assert self.scorer is not None
                scored = [self.scorer(name, ranges[j][1]) for j in missing]
            for j, got in zip(missing, scored):
                k, docs = ranges[j]
                v = checked_values(self.plan.strata[k], name, docs, got)
                self.cache.put(name, docs, v)
                values[j] = v
        return [v for v in values if v is not None]

    def add(self, candidates: Sequence[str],
            on_round: Callable[[int, RaceResult], None] | None = None) -> list[CandidateRace]:
        """Race ``candidates`` (new, unique names) to the end: each round scores the running ones on the next
        documents, then stops those some candidate (new or earlier) beats. ``on_round(r, result)`` runs after
        each round's decisions. Returns the new candidates' courses."""
        plan, names = self.plan, list(candidates)
        if not names or len(set(names)) != len(names) or set(names) & set(self.names):
            raise RacingError(f"candidates must be new, unique names, got {names}")
        if len(self.names) + len(names) > self.capacity:
            raise RacingError(f"{len(self.names) + len(names)} candidates would race; this race was planned "
                              f"(its confidence level split) for at most {self.capacity}")
        C0, new = len(self.names), len(names)
        self.names += names
        S, O = len(plan.strata), len(plan.objectives)
        self.n, self.s1, self.s2 = (np.vstack([a, np.zeros((new, S))]) for a in (self.n, self.s1, self.s2))
        self.seen = [np.vstack([v, np.zeros((new, v.shape[1]))]) for v in self.seen]
        self.lower = np.vstack([self.lower, np.full((new, O), -np.inf)])
        self.upper = np.vstack([self.upper, np.full((new, O), np.inf)])
        courses = [CandidateRace(c) for c in names]
        self.result.candidates += courses
        C = len(self.names)
        active = np.zeros(C, dtype=bool)
        active[C0:] = True
        obj_names = [o.name for o in plan.objectives]
        prev = np.zeros(S, dtype=np.int64)
        n, shift, z = self.n, self.shift, self.z
        for r, row in enumerate(self.sched, start=1):
            for i in np.flatnonzero(active):
                ranges = [(k, self._range(k, int(prev[k]), int(row[k]))) for k in range(S) if row[k] > prev[k]]
                for (k, _), values in zip(ranges, self._scores(int(i), ranges)):
                    self.seen[k][i, prev[k]:row[k]] = values
                    n[i, k] += len(values)
                    self.s1[i, k] += values.sum()
                    self.s2[i, k] += (values ** 2).sum()
            est, half = objective_bounds(n, self.s1, self.s2, plan, z)
            self.lower[active], self.upper[active] = (est - half)[active], (est + half)[active]
            for i in np.flatnonzero(active):
                c = self.result.candidates[i]
                c.documents = {st.name: int(n[i, k]) for k, st in enumerate(plan.strata)}
                c.estimate, c.half_width = tuple(map(float, est[i])), tuple(map(float, half[i]))
            last = r == len(self.sched)      # every document scored: nothing left to save, the selection decides
            if last:
                beats = np.zeros((C, C), dtype=bool)
            elif plan.bounds == "paired":
                d_est, d_half = paired_bounds(*_pair_stats(self.seen, n), plan, z)
                ld = d_est - d_half
                beats = (ld >= shift).all(-1) & (ld > shift).any(-1)
            else:
                bar = self.upper[:, None, :] + shift
                beats = (self.lower[None] >= bar).all(-1) & (self.lower[None] > bar).any(-1)
            beats &= ~np.eye(C, dtype=bool)
            dom = _first(beats)
            newly = [i for i in np.flatnonzero(active) if dom[i] >= 0]
            bar = ", ".join(f"{s:g}" for s in shift)
            margin = f" by at least {bar}" if shift.any() else ""
            for i in newly:
                q = int(dom[i])
                c = self.result.candidates[i]
                c.stopped_round, c.dominator = r, self.names[q]
                if plan.bounds == "paired":
                    c.reason = (f"stopped after round {r} ({c.documents_used} documents): {self.names[q]} minus it "
                                f"is {_fmt_bounds(obj_names, d_est[i, q], d_half[i, q])}: lower bounds at least {bar} on "
                                f"every objective")
                else:
                    lq, uq = self.lower[q], self.upper[q]
                    c.reason = (f"stopped after round {r} ({c.documents_used} documents): {self.names[q]} "
                                f"({_fmt_bounds(obj_names, (lq + uq) / 2, (uq - lq) / 2)}) "
                                f"beats its upper bounds ({_fmt_bounds(obj_names, est[i], half[i])}){margin}")
            active[newly] = False
            prev = row
            self.result.rounds = max(self.result.rounds, r)
            if on_round is not None:
                on_round(r, self.result)
            if not active.any():
                break
        return courses


def race(plan: RacingPlan, candidates: Sequence[str], scorer: Scorer | None = None, cache: RangeCache | None = None,
         on_round: Callable[[int, RaceResult], None] | None = None, batch: BatchScorer | None = None) -> RaceResult:
    """Race ``candidates`` (unique names) under ``plan`` (see :class:`Racer`); ``on_round(r, partial result)``
    runs after each round's stopping decisions."""
    names = list(candidates)
    if len(set(names)) != len(names) or not names:
        raise RacingError(f"candidates must be a non-empty list of unique names, got {names}")
    racer = Racer(plan, scorer, cache, capacity=len(names), batch=batch)
    racer.add(names, on_round)
    return racer.result


__all__ = [
    "BatchScorer",
    "CandidateRace",
    "DirRangeCache",
    "DocRange",
    "MemoryRangeCache",
    "Objective",
    "RaceResult",
    "Racer",
    "RacingError",
    "RacingPlan",
    "RangeCache",
    "Stratum",
    "dominators",
    "objective_bounds",
    "paired_bounds",
    "paired_dominators",
    "race",
]
