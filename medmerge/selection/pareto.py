"""Pareto selection over a merge sweep's candidates: frontier, near-frontier, knee, hypervolume.

Every candidate is a point (x, y) of two objectives, both maximised: by default x = IF score and
y = Medical Avg, any two scores of :mod:`medmerge.evaluation.objectives` otherwise; :func:`select` takes the
objectives (their names and labels) and the table, the JSON and the figures carry them. The functions are
pure: they take a list of points and return some of the same objects (never copies), so callers can compare
by identity. Anything with the attributes of :class:`ScoredPoint` (``name``, ``x``, ``y`` and optionally
the stderrs) works.

Definitions:

* ``a`` dominates ``b``  ⇔  a.x ≥ b.x and a.y ≥ b.y and (a.x > b.x or a.y > b.y).
* frontier  = the points no other point dominates (exact duplicates do not dominate each other).
* near_frontier(ε) = the points p for which no q dominates p + (ε, ε).
* knee      = the frontier point farthest above the chord joining the frontier's extremes,
  in coordinates normalised to [0, 1] by the frontier's own range.
* hypervolume = area of the union of the boxes [r.x, p.x] × [r.y, p.y] over the frontier,
  for a reference point r (by default the worse parent on each axis).

Bad input (no points, non-finite scores or stderrs, ε < 0) raises :class:`ParetoError`, a
``ValueError`` that the CLI also reports as a :class:`~medmerge.errors.MedmergeError`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from medmerge.errors import MedmergeError
from medmerge.io.tables import text_table

# Two floats closer than this count as tied (knee selection): hand-equal values computed along
# different paths differ by an ulp or so, and the tie rule must still apply to them.
TIE_TOL = 1e-12
DEFAULT_NAMES = ("if_score", "medical_avg")      # (x, y): medmerge.evaluation.objectives.DEFAULT_OBJECTIVES
DEFAULT_LABELS = ("IF score", "Medical Avg")


class ParetoError(MedmergeError, ValueError):
    """Bad input to Pareto selection: no points, non-finite scores, negative ε, no reference."""


class ScoredPoint(BaseModel):
    """One scored candidate: its two objectives ``x`` and ``y`` (both maximised), with their stderrs.

    Scores and stderrs must be finite; stderrs must be ≥ 0. ``method``/``ratio`` describe the
    merge (e.g. ``"slerp"``, 0.3) and are only used for tables and trajectory plots.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    x: float
    y: float
    x_stderr: float | None = None
    y_stderr: float | None = None
    method: str | None = None
    ratio: float | None = None

    @field_validator("x", "y", "ratio")
    @classmethod
    def _finite(cls, v, info):
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be a finite number, got {v}")
        return v

    @field_validator("x_stderr", "y_stderr")
    @classmethod
    def _stderr(cls, v, info):
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{info.field_name} must be a finite number >= 0 or None, got {v}")
        return v


# --- validation -------------------------------------------------------------------------------


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def validate_points(points) -> list:
    """Materialise ``points`` and check each has finite scores and finite, non-negative stderrs."""
    if points is None:
        raise ParetoError("no candidates: points is None")
    pts = list(points)
    if not pts:
        raise ParetoError("no candidates: need at least one point")
    for i, p in enumerate(pts):
        label = repr(getattr(p, "name", f"#{i}"))
        for attr in ("x", "y"):
            v = getattr(p, attr, None)
            if not _number(v):
                raise ParetoError(f"candidate {label}: {attr} is {v!r}; scores must be finite numbers")
        for attr in ("x_stderr", "y_stderr"):
            v = getattr(p, attr, None)
            if v is not None and not (_number(v) and v >= 0):
                raise ParetoError(f"candidate {label}: {attr} is {v!r}; stderrs must be finite and >= 0, or None")
    return pts


def _check_eps(eps) -> float:
    if not (_number(eps) and eps >= 0):
        raise ParetoError(f"eps is {eps!r}; it must be a finite number >= 0")
    return float(eps)


def _check_reference(reference) -> tuple[float, float]:
    try:
        x, y = reference
    except (TypeError, ValueError):
        raise ParetoError(f"reference is {reference!r}; it must be a pair (x, y)") from None
    if not (_number(x) and _number(y)):
        raise ParetoError(f"reference is {reference!r}; both coordinates must be finite numbers")
    return float(x), float(y)


# --- dominance and frontier -------------------------------------------------------------------


def _order(points: list) -> list:
    """Frontier order: x ascending, then y descending, then name."""
    return sorted(points, key=lambda p: (p.x, -p.y, str(getattr(p, "name", ""))))


def dominates(a, b) -> bool:
    """``a`` dominates ``b``: a.x ≥ b.x and a.y ≥ b.y, strictly on at least one axis.

    A point never dominates an exact copy of itself.
    """
    return a.x >= b.x and a.y >= b.y and (a.x > b.x or a.y > b.y)


def frontier(points) -> list:
    """The non-dominated points: {p : no q dominates p}.

    Exact duplicates of a frontier point all stay (equal points do not dominate each other).
    Returned in frontier order: x ascending, then y descending, then name
    (on a frontier, x ascending means y descending). O(n²), which is nothing for a sweep.
    """
    pts = validate_points(points)
    return _order([p for p in pts if not any(dominates(q, p) for q in pts)])


def _shift(p, q, eps: float, use_stderr: bool) -> tuple[float, float]:
    """Per-axis shift of p when compared with q: ε, or ε + sqrt(se_p² + se_q²) per axis."""
    if not use_stderr:
        return eps, eps
    se = lambda o, a: getattr(o, a, None) or 0.0  # noqa: E731  (missing stderr counts as 0)
    return (eps + math.hypot(se(p, "x_stderr"), se(q, "x_stderr")),
            eps + math.hypot(se(p, "y_stderr"), se(q, "y_stderr")))


def _far_dominated(p, q, eps: float, use_stderr: bool) -> bool:
    """q dominates p shifted up by the per-axis shift (dx, dy)."""
    dx, dy = _shift(p, q, eps, use_stderr)
    px, py = p.x + dx, p.y + dy
    return q.x >= px and q.y >= py and (q.x > px or q.y > py)


def near_frontier(points, eps: float = 0.0, use_stderr: bool = False) -> list:
    """Points within ε of the frontier.

    p is kept iff no q satisfies q.x ≥ p.x + dx and q.y ≥ p.y + dy with at least one strict,
    i.e. no q beats p by at least the shift on *both* axes. The shift is dx = dy = ε; with
    ``use_stderr`` it is per pair and axis: dx = ε + sqrt(se_x(p)² + se_x(q)²) (likewise dy
    with the Medical Avg stderrs; a missing stderr counts as 0), so a candidate beaten only
    within one combined standard error stays. ε = 0 without stderrs gives exactly
    :func:`frontier`; the result always contains the frontier. Frontier order.
    """
    eps = _check_eps(eps)
    pts = validate_points(points)
    return _order([p for p in pts if not any(_far_dominated(p, q, eps, use_stderr) for q in pts)])


# --- knee -------------------------------------------------------------------------------------


def _normalise(front: list) -> list[tuple[float, float]]:
    """(x, y) scaled per axis to [0, 1] by the frontier's own min/max; a zero-range axis maps to 0."""
    def scale(vals):
        lo, hi = min(vals), max(vals)
        return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in vals]

    return list(zip(scale([p.x for p in front]), scale([p.y for p in front])))


def _chord_distances(norm: list[tuple[float, float]], a: tuple[float, float],
                     b: tuple[float, float]) -> list[float]:
    """Signed perpendicular distance of each point to the line a→b, positive towards (1, 1).

    a is the max-x extreme and b the max-y extreme, so the cross product (b − a) × (p − a) is
    negative on the (1, 1) side; it is negated. A degenerate chord (a == b) gives all zeros.
    """
    (ax, ay), (bx, by) = a, b
    length = math.hypot(bx - ax, by - ay)
    if length == 0:
        return [0.0] * len(norm)
    return [((by - ay) * (px - ax) - (bx - ax) * (py - ay)) / length for px, py in norm]


def _first_max(values: list[float]) -> int:
    """Index of the first value within TIE_TOL of the maximum."""
    top = max(values)
    return next(i for i, v in enumerate(values) if v >= top - TIE_TOL)


def knee(points):
    """The knee of the frontier of ``points``: the best-balanced trade-off.

    1. Take the frontier F (frontier order) and normalise it per axis to [0, 1] by F's own
       min/max: x' = (x − min x) / (max x − min x), same for y; a zero-range axis maps to 0.
    2. Draw the chord from the max-x point A to the max-y point B (in
       normalised coordinates A = (1, 0), B = (0, 1), so the chord is x' + y' = 1).
    3. The knee is the point P of F with the largest *signed* perpendicular distance to the
       chord, d(P) = ((B.y − A.y)(P.x − A.x) − (B.x − A.x)(P.y − A.y)) / |B − A|, positive on
       the side of the ideal corner (1, 1); here d = (x' + y' − 1) / √2. Signed, because a point
       in a dent of the frontier (below the chord) is the worst compromise, not the knee.
    4. If |F| < 3, or no point lies above the chord (max d ≤ 0), take the point with the
       largest x' + y'. Ties (within 1e-12) go to the first point in frontier order, i.e. the
       lower IF score / higher Medical Avg: a 2-point frontier yields its max-Medical-Avg end.

    Since d is a monotone function of x' + y', the knee is always the frontier point with the
    largest normalised x' + y' (first in frontier order on ties); steps 2–4 say why.
    """
    front = frontier(points)
    norm = _normalise(front)
    if len(front) >= 3:
        a = norm[max(range(len(front)), key=lambda i: front[i].x)]
        b = norm[max(range(len(front)), key=lambda i: front[i].y)]
        dist = _chord_distances(norm, a, b)
        if max(dist) > TIE_TOL:
            return front[_first_max(dist)]
    return front[_first_max([x + y for x, y in norm])]


# --- reference and hypervolume ----------------------------------------------------------------


def parent_points(parents) -> list[tuple[str, float, float]]:
    """``[(label, x, y), ...]`` from the accepted parent forms.

    ``parents`` is a mapping ``{label: (x, y) | ScoredPoint}`` or a sequence of
    Candidates / ``(x, y)`` pairs (labelled by name, else "parent 1", ...).
    """
    if parents is None:
        raise ParetoError("no parents given")
    items = list(parents.items()) if isinstance(parents, Mapping) else [
        (getattr(p, "name", None) or f"parent {i + 1}", p) for i, p in enumerate(parents)]
    if not items:
        raise ParetoError("no parents: need at least one parent")
    out = []
    for label, p in items:
        if hasattr(p, "x") and hasattr(p, "y"):
            xy = (p.x, p.y)
        elif isinstance(p, Sequence) and not isinstance(p, str) and len(p) == 2:
            xy = tuple(p)
        else:
            raise ParetoError(f"parent {label!r} is {p!r}; give a ScoredPoint or an (x, y) pair")
        if not (_number(xy[0]) and _number(xy[1])):
            raise ParetoError(f"parent {label!r} has scores {xy!r}; they must be finite numbers")
        out.append((str(label), float(xy[0]), float(xy[1])))
    return out


def default_reference(parents) -> tuple[float, float]:
    """The worse parent on each axis: (min parents' x, min parents' y)."""
    pp = parent_points(parents)
    return min(x for _, x, _ in pp), min(y for _, _, y in pp)


def _resolve_reference(reference, parents) -> tuple[float, float]:
    """An explicit reference wins; else the parents' default; neither is an error."""
    if reference is not None:
        return _check_reference(reference)
    if parents is not None:
        return default_reference(parents)
    raise ParetoError("hypervolume needs a reference point or the parents to derive one from")


def hypervolume(points, reference=None, parents=None) -> float:
    """Area dominated by the frontier and bounded below-left by the reference r = (r.x, r.y).

    HV = area of ⋃_p [r.x, p.x] × [r.y, p.y] over frontier points with p.x > r.x and p.y > r.y
    (others add nothing). Exact sweep over that frontier in x-ascending (hence y-descending)
    order: HV = Σ_i (x_i − x_{i−1}) · (y_i − r.y), with x_0 = r.x. Duplicates add a zero-width
    strip, so they never count twice. ``reference`` defaults to
    :func:`default_reference` of ``parents``; one of the two is required.
    """
    rx, ry = _resolve_reference(reference, parents)
    area, prev_x = 0.0, rx
    for p in frontier(points):
        if p.x > rx and p.y > ry:
            area += (p.x - prev_x) * (p.y - ry)
            prev_x = p.x
    return area


# --- one-call selection -----------------------------------------------------------------------


def _fmt(v, se=None) -> str:
    if v is None:
        return ""
    return f"{v:.4f}" if se is None else f"{v:.4f}±{se:.4f}"


def _fmt_ratio(r) -> str:
    """0.0 -> '0.0', 0.25 -> '0.25' (as in candidate names)."""
    if r is None:
        return ""
    s = f"{r:.4f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


class FlaggedPoint(ScoredPoint):
    """A point of a selection with where it landed."""

    on_frontier: bool = False
    near: bool = False
    knee: bool = False


class SelectionSummary(BaseModel):
    """:meth:`Selection.to_dict`, typed: every point with its flags, the selected sets, HV and reference."""

    points: list[FlaggedPoint]
    frontier: list[ScoredPoint]
    near: list[ScoredPoint]
    knee: ScoredPoint
    hypervolume: float | None = None
    reference: list[float] | None = None
    eps: float
    use_stderr: bool
    objectives: dict[str, str]                           # {"x": name, "y": name}
    labels: dict[str, str] = {}                          # {"x": label, "y": label}


def _point_dict(p) -> dict:
    keys = ("name", "method", "ratio", "x", "y", "x_stderr", "y_stderr")
    return {k: getattr(p, k, None) for k in keys}


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select`. Lists hold the caller's own objects (compare by identity).

    ``hypervolume`` and ``reference`` are None when neither a reference nor parents were given.
    """

    points: list
    frontier: list
    near: list
    knee: Any
    hypervolume: float | None
    reference: tuple[float, float] | None
    eps: float = 0.0
    use_stderr: bool = False
    names: tuple[str, str] = DEFAULT_NAMES      # the objectives on x and y, as run configs name them
    labels: tuple[str, str] = DEFAULT_LABELS    # and as tables and figures show them

    def flags(self, p) -> dict[str, bool]:
        """``{"on_frontier", "near", "knee"}`` for one of ``self.points``."""
        return {"on_frontier": any(p is q for q in self.frontier),
                "near": any(p is q for q in self.near),
                "knee": p is self.knee}

    def table(self) -> str:
        """Plain text table of every candidate (input order) with its flags, then the hypervolume."""
        head = ("name", "method", "ratio", self.labels[1], self.labels[0], "frontier", "near", "knee")
        rows = [head]
        for p in self.points:
            f = self.flags(p)
            rows.append((str(getattr(p, "name", "")), str(getattr(p, "method", None) or ""),
                         _fmt_ratio(getattr(p, "ratio", None)),
                         _fmt(p.y, getattr(p, "y_stderr", None)),
                         _fmt(p.x, getattr(p, "x_stderr", None)),
                         "yes" if f["on_frontier"] else "", "yes" if f["near"] else "",
                         "yes" if f["knee"] else ""))
        lines = [text_table(rows)]
        near = f"near: eps={self.eps:g}" + (" + combined stderr" if self.use_stderr else "")
        if self.hypervolume is None or self.reference is None:
            lines.append(f"{near}; hypervolume: n/a (no reference)")
        else:
            rx, ry = self.reference
            lines.append(f"{near}; hypervolume: {self.hypervolume:.6f} "
                         f"(reference {self.labels[0]} {rx:.4f}, {self.labels[1]} {ry:.4f})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-serialisable summary: every point with its flags, the selected sets, HV, reference."""
        return {
            "points": [{**_point_dict(p), **self.flags(p)} for p in self.points],
            "frontier": [_point_dict(p) for p in self.frontier],
            "near": [_point_dict(p) for p in self.near],
            "knee": _point_dict(self.knee),
            "hypervolume": self.hypervolume,
            "reference": None if self.reference is None else list(self.reference),
            "eps": self.eps,
            "use_stderr": self.use_stderr,
            "objectives": {"x": self.names[0], "y": self.names[1]},
            "labels": {"x": self.labels[0], "y": self.labels[1]},
        }


def select(points, eps: float = 0.0, use_stderr: bool = False, reference=None, parents=None,
           objectives: Sequence | None = None) -> Selection:
    """Frontier, near-frontier (ε, stderr), knee and hypervolume of ``points`` in one call.

    The hypervolume uses ``reference`` if given, else :func:`default_reference` of ``parents``;
    with neither it is None (the rest is still computed). ``objectives`` are the x and y objectives (anything
    with a ``name`` and a ``label``, e.g. :class:`medmerge.evaluation.objectives.Objective`; default IF score and
    Medical Avg): the table, the JSON and the figures name them.
    """
    eps = _check_eps(eps)
    pts = validate_points(points)
    ref = None if reference is None and parents is None else _resolve_reference(reference, parents)
    return Selection(
        points=pts,
        frontier=frontier(pts),
        near=near_frontier(pts, eps=eps, use_stderr=use_stderr),
        knee=knee(pts),
        hypervolume=None if ref is None else hypervolume(pts, reference=ref),
        reference=ref,
        eps=eps,
        use_stderr=bool(use_stderr),
        names=DEFAULT_NAMES if objectives is None else tuple(o.name for o in objectives),
        labels=DEFAULT_LABELS if objectives is None else tuple(o.label for o in objectives),
    )
