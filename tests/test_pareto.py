"""Pareto selection and figures on hand-worked examples.

Points are written C(name, x, y) with x = IF score and y = Medical Avg; every expected number
below is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import json
import math

import pytest

from medmerge.selection.pareto import (
    ParetoError,
    ScoredPoint,
    Selection,
    default_reference,
    dominates,
    frontier,
    hypervolume,
    knee,
    near_frontier,
    select,
)


def C(name: str, x: float, y: float, **kw) -> ScoredPoint:
    return ScoredPoint(name=name, x=x, y=y, **kw)


def names(points) -> list[str]:
    return [p.name for p in points]


# --- dominance and frontier -------------------------------------------------------------------

# a is beaten by e (same y 0.9, higher x); c by b (0.5 ≥ 0.4, 0.7 ≥ 0.6); d is tied with b on
# x = 0.5 but lower (0.5 < 0.7); f and g are exact duplicates at (0.8, 0.4).
A, B, Cc, D = C("a", 0.2, 0.9), C("b", 0.5, 0.7), C("c", 0.4, 0.6), C("d", 0.5, 0.5)
E, F, G = C("e", 0.3, 0.9), C("f", 0.8, 0.4), C("g", 0.8, 0.4)
SMALL = [A, B, Cc, D, E, F, G]


def test_dominates_needs_one_strict_axis():
    assert dominates(E, A)          # 0.3 > 0.2, 0.9 = 0.9
    assert not dominates(A, E)
    assert dominates(B, D)          # 0.5 = 0.5, 0.7 > 0.5
    assert not dominates(F, G) and not dominates(G, F)  # equal points
    assert not dominates(B, B)


def test_frontier_drops_dominated_and_ties_keeps_duplicates():
    # e: nothing has y ≥ 0.9 and x ≥ 0.3 except itself; b: nothing has x ≥ 0.5 and y ≥ 0.7;
    # f, g: only each other have x ≥ 0.8, and equal points do not dominate → both stay.
    # Order: x ascending (0.3, 0.5, 0.8, 0.8), the tie f/g by name.
    assert names(frontier(SMALL)) == ["e", "b", "f", "g"]
    assert names(frontier(list(reversed(SMALL)))) == ["e", "b", "f", "g"]
    out = frontier(SMALL)
    assert out[0] is E and out[1] is B  # the caller's own objects, not copies


def test_frontier_of_one_point_is_that_point():
    p = C("only", 0.1, 0.2)
    assert frontier([p]) == [p] and frontier([p])[0] is p


def test_frontier_order_is_y_descending_on_x_ties_then_name():
    # Sorting key (x, −y, name): the two (0.5, ·) points are tied on x, higher y first; they are
    # not both on a frontier, so check the ordering on near_frontier with a large ε.
    pts = [C("z", 0.5, 0.2), C("y", 0.5, 0.6), C("x", 0.1, 0.1)]
    assert names(near_frontier(pts, eps=10)) == ["x", "y", "z"]


# --- near_frontier ----------------------------------------------------------------------------

def test_near_frontier_with_zero_eps_is_the_frontier():
    assert near_frontier(SMALL) == frontier(SMALL)
    assert near_frontier(SMALL, eps=0.0, use_stderr=True) == frontier(SMALL)  # no stderrs → shift 0


def test_near_frontier_eps_keeps_small_gaps_and_drops_large_ones():
    P, S, T = C("P", 0.5, 0.7), C("S", 0.2, 0.9), C("T", 0.9, 0.3)
    # Q = (0.47, 0.6) is beaten by P by 0.03 on x and 0.1 on y. Shifted by 0.05: (0.52, 0.65);
    # P.x = 0.5 < 0.52, S.x = 0.2 < 0.52, T.y = 0.3 < 0.65 → nothing dominates it → stays.
    Q = C("Q", 0.47, 0.6)
    # R = (0.4, 0.6) shifted: (0.45, 0.65); P = (0.5, 0.7) ≥ on both, strictly → goes.
    R = C("R", 0.4, 0.6)
    pts = [P, Q, R, S, T]
    assert names(frontier(pts)) == ["S", "P", "T"]
    assert names(near_frontier(pts, eps=0.05)) == ["S", "Q", "P", "T"]  # x: 0.2, 0.47, 0.5, 0.9


def test_near_frontier_stderr_keeps_points_within_one_combined_stderr():
    # Combined stderr P–Q on each axis: sqrt(0.03² + 0.04²) = sqrt(0.0025) = 0.05.
    P = C("P", 0.50, 0.70, x_stderr=0.03, y_stderr=0.04)
    Q = C("Q", 0.48, 0.66, x_stderr=0.04, y_stderr=0.03)
    # Q shifted by 0.05: (0.53, 0.71); P = (0.5, 0.7) is below on both → Q stays.
    # U = (0.40, 0.60) vs P: x shift sqrt(2·0.03²) = 0.0424 → 0.4424; y shift sqrt(2·0.04²) = 0.0566
    # → 0.6566; P = (0.5, 0.7) is above both → U goes.
    U = C("U", 0.40, 0.60, x_stderr=0.03, y_stderr=0.04)
    assert names(near_frontier([P, Q, U], use_stderr=True)) == ["Q", "P"]
    assert names(near_frontier([P, Q, U], use_stderr=False)) == ["P"]  # plain frontier
    # The same scores without stderrs: the shift is 0, P dominates Q (0.5 > 0.48, 0.7 > 0.66).
    bare = [C("P", 0.50, 0.70), C("Q", 0.48, 0.66), C("U", 0.40, 0.60)]
    assert names(near_frontier(bare, use_stderr=True)) == ["P"]


def test_near_frontier_stderr_adds_to_eps():
    # Shift = ε + combined stderr = 0.02 + sqrt(0.03² + 0.0²) = 0.05 on x, 0.02 on y (no y stderr).
    P = C("P", 0.50, 0.70, x_stderr=0.03)
    # Q = (0.46, 0.60) shifted: (0.51, 0.62); P.x = 0.5 < 0.51 → stays.
    Q = C("Q", 0.46, 0.60)
    # W = (0.44, 0.60) shifted: (0.49, 0.62); P = (0.5, 0.7) above both → goes.
    W = C("W", 0.44, 0.60)
    assert names(near_frontier([P, Q, W], eps=0.02, use_stderr=True)) == ["Q", "P"]


# --- knee -------------------------------------------------------------------------------------

def test_knee_on_four_point_frontier():
    # Frontier x: 0.2, 0.4, 0.6, 0.8 (range 0.6) → x' = 0, 1/3, 2/3, 1;
    #          y: 0.9, 0.85, 0.7, 0.4 (range 0.5) → y' = 1, 0.9, 0.6, 0.
    # Chord through (1, 0) and (0, 1): d = (x' + y' − 1)/√2 = 0, 0.2333/√2 = 0.1650,
    # 0.2667/√2 = 0.1886, 0 → the knee is (0.6, 0.7). (0.3, 0.5) is dominated and ignored.
    pts = [C("k1", 0.2, 0.9), C("k2", 0.4, 0.85), C("k3", 0.6, 0.7), C("k4", 0.8, 0.4), C("dom", 0.3, 0.5)]
    assert knee(pts).name == "k3"


def test_knee_ignores_points_in_a_dent_below_the_chord():
    # Already normalised (x and y both span [0, 1]). Signed d = (x + y − 1)/√2:
    # (0, 1) → 0; (0.3, 0.8) → +0.1/√2 = +0.0707; (0.6, 0.1) → −0.3/√2 = −0.2121; (1, 0) → 0.
    # (0.6, 0.1) is non-dominated (only (1, 0) has x ≥ 0.6, and its y is 0 < 0.1) but lies in a
    # dent: the largest |d|, yet the worst compromise. The knee is (0.3, 0.8).
    pts = [C("top", 0.0, 1.0), C("bulge", 0.3, 0.8), C("dent", 0.6, 0.1), C("right", 1.0, 0.0)]
    assert names(frontier(pts)) == ["top", "bulge", "dent", "right"]
    assert knee(pts).name == "bulge"


def test_knee_on_collinear_frontier_falls_back_to_first():
    # (0.2, 0.8), (0.5, 0.5), (0.8, 0.2): x' = 0, 0.5, 1 and y' = 1, 0.5, 0 → every d = 0 (up to
    # rounding in 0.3/0.6), every x' + y' = 1 → tie → first in frontier order.
    pts = [C("mid", 0.5, 0.5), C("right", 0.8, 0.2), C("left", 0.2, 0.8)]
    assert knee(pts).name == "left"


def test_knee_on_two_point_frontier_is_the_higher_medical_end():
    # Normalised (0, 1) and (1, 0): x' + y' = 1 for both → first in frontier order = lower IF
    # score, higher Medical Avg. (0.2, 0.4) is dominated by both.
    pts = [C("instructish", 0.7, 0.5), C("clinicalish", 0.3, 0.8), C("dom", 0.2, 0.4)]
    assert knee(pts).name == "clinicalish"


def test_knee_of_single_point_and_of_duplicates():
    p = C("only", 0.4, 0.4)
    assert knee([p]) is p
    # Two identical points: both on the frontier, both normalised to (0, 0) → first by name.
    assert knee([C("b", 0.4, 0.4), C("a", 0.4, 0.4)]).name == "a"


# --- hypervolume ------------------------------------------------------------------------------

HV3 = [C("h1", 0.3, 0.8), C("h2", 0.5, 0.6), C("h3", 0.7, 0.3), C("hdom", 0.4, 0.5)]
REF = (0.1, 0.2)


def test_hypervolume_of_three_point_frontier():
    # Strips from the reference x = 0.1, height above y = 0.2:
    # (0.3 − 0.1)(0.8 − 0.2) + (0.5 − 0.3)(0.6 − 0.2) + (0.7 − 0.5)(0.3 − 0.2)
    # = 0.2·0.6 + 0.2·0.4 + 0.2·0.1 = 0.12 + 0.08 + 0.02 = 0.22.  (hdom adds nothing.)
    assert hypervolume(HV3, reference=REF) == pytest.approx(0.22, abs=1e-12)


def test_hypervolume_ignores_points_outside_the_reference():
    # (0.05, 0.95) has x < 0.1 and (0.9, 0.15) has y < 0.2: both on the frontier, neither adds area.
    pts = HV3 + [C("left", 0.05, 0.95), C("low", 0.9, 0.15)]
    assert names(frontier(pts)) == ["left", "h1", "h2", "h3", "low"]
    assert hypervolume(pts, reference=REF) == pytest.approx(0.22, abs=1e-12)
    assert hypervolume([C("out", 0.05, 0.95)], reference=REF) == 0.0


def test_hypervolume_does_not_double_count_duplicates():
    dup = HV3 + [C(p.name + "'", p.x, p.y) for p in HV3]
    assert hypervolume(dup, reference=REF) == pytest.approx(0.22, abs=1e-12)


def test_hypervolume_of_single_point():
    # (0.6 − 0.1)(0.7 − 0.2) = 0.5·0.5 = 0.25
    assert hypervolume([C("s", 0.6, 0.7)], reference=REF) == pytest.approx(0.25, abs=1e-12)


def test_hypervolume_default_reference_from_parents():
    parents = {"clinical": (0.30, 0.70), "instruct": (0.80, 0.50)}
    # Worse parent per axis: min IF = 0.30 (clinical), min Medical = 0.50 (instruct).
    assert default_reference(parents) == (0.30, 0.50)
    pts = [C("m1", 0.5, 0.65), C("m2", 0.6, 0.6), C("clinical", 0.30, 0.70), C("instruct", 0.80, 0.50)]
    # The parents sit on the reference's edges (x = 0.3 or y = 0.5) → no area. Strips:
    # (0.5 − 0.3)(0.65 − 0.5) + (0.6 − 0.5)(0.6 − 0.5) = 0.2·0.15 + 0.1·0.1 = 0.03 + 0.01 = 0.04
    assert hypervolume(pts, parents=parents) == pytest.approx(0.04, abs=1e-12)
    as_candidates = [C("clinical", 0.30, 0.70), C("instruct", 0.80, 0.50)]
    assert default_reference(as_candidates) == (0.30, 0.50)
    assert hypervolume(pts, parents=as_candidates) == pytest.approx(0.04, abs=1e-12)
    # An explicit reference wins: from (0, 0) the strips are 0.3·0.7 + 0.2·0.65 + 0.1·0.6 + 0.2·0.5
    # = 0.21 + 0.13 + 0.06 + 0.10 = 0.50
    assert hypervolume(pts, reference=(0.0, 0.0), parents=parents) == pytest.approx(0.50, abs=1e-12)


# --- select -----------------------------------------------------------------------------------

def test_select_bundles_everything_and_serialises():
    pts = [C("linear-0.0", 0.30, 0.70, method="linear", ratio=0.0, y_stderr=0.01),
           C("linear-0.5", 0.5, 0.65, method="linear", ratio=0.5),
           C("slerp-0.5", 0.6, 0.6, method="slerp", ratio=0.5),
           C("slerp-0.7", 0.58, 0.55, method="slerp", ratio=0.7),
           C("linear-1.0", 0.80, 0.50, method="linear", ratio=1.0)]
    sel = select(pts, eps=0.03, parents={"clinical": (0.30, 0.70), "instruct": (0.80, 0.50)})
    assert isinstance(sel, Selection)
    # slerp-0.7 (0.58, 0.55) is beaten by slerp-0.5 by 0.02 on x, 0.05 on y: only near (ε = 0.03).
    assert names(sel.frontier) == ["linear-0.0", "linear-0.5", "slerp-0.5", "linear-1.0"]
    assert names(sel.near) == ["linear-0.0", "linear-0.5", "slerp-0.7", "slerp-0.5", "linear-1.0"]
    # Frontier x' = 0, 0.4, 0.6, 1 (range 0.5); y' = 1, 0.75, 0.5, 0 (range 0.2);
    # x' + y' = 1, 1.15, 1.1, 1 → knee linear-0.5.
    assert sel.knee.name == "linear-0.5"
    assert sel.reference == (0.30, 0.50) and sel.hypervolume == pytest.approx(0.04, abs=1e-12)

    table = sel.table().splitlines()
    assert table[0].split() == ["name", "method", "ratio", "Medical", "Avg", "IF", "score", "frontier", "near", "knee"]
    assert table[2].split() == ["linear-0.0", "linear", "0.0", "0.7000±0.0100", "0.3000", "yes", "yes"]
    assert table[3].split()[-3:] == ["yes", "yes", "yes"]   # linear-0.5: frontier, near, knee
    assert table[5].split()[-1] == "yes"                     # slerp-0.7: near only
    assert "hypervolume: 0.040000" in table[-1]

    d = json.loads(json.dumps(sel.to_dict()))
    assert d["knee"]["name"] == "linear-0.5" and d["reference"] == [0.30, 0.50]
    assert [p["near"] for p in d["points"]] == [True] * 5
    assert [p["on_frontier"] for p in d["points"]] == [True, True, True, False, True]
    assert select(pts).hypervolume is None  # no reference, no parents → no hypervolume
    assert d["objectives"] == {"x": "if_score", "y": "medical_avg"}
    assert d["labels"] == {"x": "IF score", "y": "Medical Avg"}


def test_the_selection_carries_the_objectives_it_was_given():
    """Any two objectives: the table, the JSON (typed as SelectionSummary) and the figure name them."""
    from types import SimpleNamespace

    from medmerge.selection.figures import frontier_figure
    from medmerge.selection.pareto import SelectionSummary

    pts = [C("a", 0.2, 0.9), C("b", 0.6, 0.5, y_stderr=0.01)]
    objectives = (SimpleNamespace(name="hellaswag", label="HellaSwag acc_norm"),
                  SimpleNamespace(name="medical5", label="Medical-5 mean"))
    sel = select(pts, objectives=objectives)
    assert sel.table().splitlines()[0].split()[3:6] == ["Medical-5", "mean", "HellaSwag"]
    summary = SelectionSummary(**json.loads(json.dumps(sel.to_dict())))
    assert summary.objectives == {"x": "hellaswag", "y": "medical5"}
    assert summary.labels == {"x": "HellaSwag acc_norm", "y": "Medical-5 mean"}
    assert summary.points[1].y_stderr == 0.01 and summary.knee.name in {"a", "b"}
    ax = frontier_figure(pts, selection=sel).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("HellaSwag acc_norm", "Medical-5 mean")


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [frontier, near_frontier, knee, select, lambda p: hypervolume(p, reference=REF)])
def test_empty_input_is_refused(fn):
    with pytest.raises(ValueError, match="no candidates"):
        fn([])


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="y must be a finite number"):
        C("bad", 0.5, math.nan)
    with pytest.raises(ValueError, match="x_stderr must be a finite number >= 0"):
        C("bad", 0.5, 0.5, x_stderr=-0.1)
    # Objects that skipped validation are still checked by every function.
    sneaky = ScoredPoint.model_construct(name="sneaky", x=math.nan, y=0.5)
    with pytest.raises(ParetoError, match="'sneaky': x is nan"):
        frontier([C("ok", 0.1, 0.1), sneaky])


def test_bad_eps_reference_and_parents_are_refused():
    pts = [C("p", 0.5, 0.5)]
    with pytest.raises(ValueError, match="eps is -0.1"):
        near_frontier(pts, eps=-0.1)
    with pytest.raises(ValueError, match="eps is nan"):
        select(pts, eps=math.nan)
    with pytest.raises(ValueError, match="needs a reference point or the parents"):
        hypervolume(pts)
    with pytest.raises(ValueError, match="reference is"):
        hypervolume(pts, reference=(0.1, math.nan))
    with pytest.raises(ValueError, match="no parents"):
        default_reference({})
    with pytest.raises(ValueError, match="parent 'clinical'"):
        default_reference({"clinical": "0.3"})
    assert issubclass(ParetoError, ValueError)


# --- figures ----------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP = [C(f"{m}-{r}", x, y, method=m, ratio=r)
         for m, shift in (("linear", 0.0), ("slerp", 0.02))
         for r, x, y in ((0.0, 0.30, 0.70), (0.3, 0.45 + shift, 0.66), (0.6, 0.62 + shift, 0.60),
                         (1.0, 0.80, 0.50))] + [C("no-ratio", 0.5, 0.5)]


def _read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


def test_plot_frontier_writes_a_png_atomically(tmp_path):
    from medmerge.selection.figures import plot_frontier

    parents = {"clinical": (0.30, 0.70), "instruct": (0.80, 0.50)}
    sel = select(SWEEP, eps=0.03, parents=parents)
    out = plot_frontier(SWEEP, tmp_path / "figs" / "frontier.png", parents=parents, selection=sel,
                        title="Figure 2")
    assert out == tmp_path / "figs" / "frontier.png"
    assert _read_png(out).shape == (600, 840, 4)  # 7 × 5 in at 120 dpi
    assert [p.name for p in out.parent.iterdir()] == ["frontier.png"]  # no temporary left
    # Default selection, parents as Candidates, overwriting in place.
    plot_frontier(SWEEP, out, parents=[C("clinical", 0.30, 0.70), C("instruct", 0.80, 0.50)])
    assert _read_png(out).shape == (600, 840, 4)
    assert [p.name for p in out.parent.iterdir()] == ["frontier.png"]


def _offsets(ax, label) -> list[tuple[float, float]]:
    (coll,) = [c for c in ax.collections if c.get_label() == label]
    return [tuple(round(float(v), 6) for v in xy) for xy in coll.get_offsets()]


def test_frontier_figure_shows_the_points_the_frontier_the_near_set_the_knee_and_the_parents():
    from medmerge.selection.figures import frontier_figure

    parents = {"clinical": (0.30, 0.70), "instruct": (0.80, 0.50)}
    sel = select(SWEEP, eps=0.03, parents=parents)
    (ax,) = frontier_figure(SWEEP, parents=parents, selection=sel).axes
    # every candidate, grouped by method in first-seen order; the ratioless point as "candidates"
    assert _offsets(ax, "linear") == [(0.30, 0.70), (0.45, 0.66), (0.62, 0.60), (0.80, 0.50)]
    assert _offsets(ax, "slerp") == [(0.30, 0.70), (0.47, 0.66), (0.64, 0.60), (0.80, 0.50)]
    assert _offsets(ax, "candidates") == [(0.50, 0.50)]
    # The frontier line, by hand: slerp beats linear by 0.02 in IF score at 0.3 and 0.6; at 0.0 and
    # 1.0 the two coincide (both kept); (0.5, 0.5) is beaten by slerp-0.6. Joined in IF-score order.
    (line,) = [ln for ln in ax.lines if ln.get_label() == "Pareto frontier"]
    assert [(round(x, 6), round(y, 6)) for x, y in line.get_xydata()] == [
        (0.30, 0.70), (0.30, 0.70), (0.47, 0.66), (0.64, 0.60), (0.80, 0.50), (0.80, 0.50)]
    # ringed: near (within ε = 0.03) but not on it -- linear-0.3 and linear-0.6 are 0.02 behind
    ringed = _offsets(ax, "near frontier (ε=0.03)")
    assert {(0.45, 0.66), (0.62, 0.60)} <= set(ringed) and (0.47, 0.66) not in ringed
    assert len(ringed) == len(sel.near) - len(sel.frontier)
    assert _offsets(ax, "knee") == [(sel.knee.x, sel.knee.y)]
    assert f"knee: {sel.knee.name}" in [t.get_text() for t in ax.texts]
    assert _offsets(ax, "parent: clinical") == [(0.30, 0.70)] and _offsets(ax, "parent: instruct") == [(0.80, 0.50)]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("IF score", "Medical Avg")


def test_plot_trajectories_writes_a_png_and_skips_ratioless_points(tmp_path):
    from medmerge.selection.figures import plot_trajectories

    out = plot_trajectories(SWEEP, tmp_path / "traj.png")
    assert _read_png(out).shape == (540, 1200, 4)  # 10 × 4.5 in at 120 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["traj.png"]
    with pytest.raises(ValueError, match="no candidate has a ratio"):
        plot_trajectories([C("no-ratio", 0.5, 0.5)], tmp_path / "none.png")
    assert [p.name for p in tmp_path.iterdir()] == ["traj.png"]


def test_failed_render_leaves_nothing_behind(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from medmerge.selection.figures import plot_frontier

    def boom(self, *a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plot_frontier(SWEEP, tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="must end in .png"):
        plot_frontier(SWEEP, tmp_path / "f.pdf")
