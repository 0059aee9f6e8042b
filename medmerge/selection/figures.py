"""Figures of a merge sweep: the Pareto plot ("Figure 2") and score trajectories ("Figure 3").

Rendering uses matplotlib's Agg canvas through the object API (``Figure`` + ``FigureCanvasAgg``),
never pyplot, so no display is needed and the process-wide backend is left alone. Every PNG is
written atomically: rendered into a hidden temporary file in the target directory, then
``os.replace``-d onto the final path, so a crash never leaves a half-written image and the
temporary file is removed on any error.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medmerge.selection.pareto import DEFAULT_LABELS, ParetoError, Selection, parent_points, select, validate_points

DPI = 120
FRONTIER_SIZE = (7.0, 5.0)  # inches: 840 × 600 px at DPI
TRAJECTORY_SIZE = (10.0, 4.5)  # inches: 1200 × 540 px; two panels side by side need the width
RATIO_LABEL = "ratio (0 = clinical, 1 = instruct)"
PARENT_MARKERS = ("s", "D", "^", "v", "P", "X")


def _text(s) -> str:
    """Candidate names are shown literally: a '$' would otherwise start mathtext."""
    return str(s).replace("$", r"\$")


def _new_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (temporary sibling, then os.replace)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path {path} must end in .png (figures are written as PNG)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so the rename is atomic; opened with "xb" so the umask applies (mkstemp's
    # 0600 would survive the rename) and an unlikely name clash fails instead of clobbering.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _by_method(points) -> dict[str, list]:
    """Points grouped by method (None → "candidates"), groups in first-seen order."""
    groups: dict[str, list] = {}
    for p in points:
        groups.setdefault(getattr(p, "method", None) or "candidates", []).append(p)
    return groups


def _ids(points) -> set[int]:
    return {id(p) for p in points}


def plot_frontier(points, path, parents=None, selection: Selection | None = None, title: str | None = None) -> Path:
    """Write :func:`frontier_figure` as a PNG at ``path``; returns the path."""
    return _save_png(frontier_figure(points, parents=parents, selection=selection, title=title), path)


def frontier_figure(points, parents=None, selection: Selection | None = None, title: str | None = None) -> Figure:
    """The y objective against the x objective (by default Medical Avg against IF score) for every candidate,
    with the Pareto frontier.

    Draws: candidates coloured by method; the frontier as a line through its points in x order;
    near-frontier points that are not on the frontier ringed; the knee starred and labelled
    with its name; each parent with its own marker and label. ``parents`` is
    ``{label: (x, y) | ScoredPoint}`` or a list of ScoredPoints. ``selection``
    defaults to :func:`medmerge.selection.pareto.select` of ``points`` (ε = 0, reference from parents).
    Returns the figure (one axes; its artists are what the PNG shows).
    """
    pts = validate_points(points)
    sel = selection if selection is not None else select(pts, parents=parents)
    parent_xy = parent_points(parents) if parents is not None else []

    fig = _new_figure(FRONTIER_SIZE)
    ax = fig.add_subplot()
    for method, group in _by_method(pts).items():
        ax.scatter([p.x for p in group], [p.y for p in group], s=28, alpha=0.75,
                   label=_text(method), zorder=2)
    ax.plot([p.x for p in sel.frontier], [p.y for p in sel.frontier], color="black",
            linewidth=1.4, marker="o", markersize=4, label="Pareto frontier", zorder=3)

    on_front = _ids(sel.frontier)
    near_only = [p for p in sel.near if id(p) not in on_front]
    if near_only:
        what = f"near frontier (ε={sel.eps:g}" + (" + stderr)" if sel.use_stderr else ")")
        ax.scatter([p.x for p in near_only], [p.y for p in near_only], s=140,
                   facecolors="none", edgecolors="tab:orange", linewidths=1.6, label=what, zorder=4)

    k = sel.knee
    ax.scatter([k.x], [k.y], marker="*", s=260, color="tab:red", edgecolors="black",
               linewidths=0.6, label="knee", zorder=5)
    ax.annotate(_text(f"knee: {getattr(k, 'name', '')}"), (k.x, k.y), xytext=(10, 10),
                textcoords="offset points", fontsize=9, color="tab:red",
                arrowprops={"arrowstyle": "-", "color": "tab:red", "linewidth": 0.8})

    for i, (label, x, y) in enumerate(parent_xy):
        ax.scatter([x], [y], marker=PARENT_MARKERS[i % len(PARENT_MARKERS)], s=90, color="0.15",
                   edgecolors="white", linewidths=0.8, label=_text(f"parent: {label}"), zorder=6)
        ax.annotate(_text(label), (x, y), xytext=(8, -14), textcoords="offset points", fontsize=9)

    ax.margins(0.08)  # room for the parent and knee labels at the extremes
    ax.set_xlabel(sel.labels[0])
    ax.set_ylabel(sel.labels[1])
    ax.set_title(title if title is not None else f"{sel.labels[1]} vs {sel.labels[0]}: Pareto frontier")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def _series(ax, group, attr: str, se_attr: str, label: str, color) -> None:
    """One method's line of ``attr`` against ratio, with stderr bars when any are known."""
    xs = [p.ratio for p in group]
    ys = [getattr(p, attr) for p in group]
    errs = [getattr(p, se_attr, None) for p in group]
    if any(e is not None for e in errs):
        ax.errorbar(xs, ys, yerr=[e or 0.0 for e in errs], marker="o", markersize=4, capsize=2,
                    color=color, label=label)
    else:
        ax.plot(xs, ys, marker="o", markersize=4, color=color, label=label)


def plot_trajectories(points, path, title: str | None = None, labels: tuple[str, str] = DEFAULT_LABELS) -> Path:
    """The two objectives (``labels``: x's, y's) against the merge ratio, one line per method, two panels.

    Points without a ratio are skipped (at least one must have one, else ValueError). Within a
    method, points are joined in ratio order; stderr bars are drawn where stderrs are known.
    Returns the PNG path.
    """
    pts = [p for p in validate_points(points) if getattr(p, "ratio", None) is not None]
    if not pts:
        raise ParetoError("no candidate has a ratio: nothing to plot against the merge ratio")

    fig = _new_figure(TRAJECTORY_SIZE)
    ax_y, ax_x = fig.subplots(1, 2, sharex=True)
    colors = [f"C{i}" for i in range(10)]
    for i, (method, group) in enumerate(_by_method(pts).items()):
        group = sorted(group, key=lambda p: p.ratio)
        _series(ax_y, group, "y", "y_stderr", _text(method), colors[i % 10])
        _series(ax_x, group, "x", "x_stderr", _text(method), colors[i % 10])
    for ax, name in ((ax_y, labels[1]), (ax_x, labels[0])):
        ax.set_xlabel(RATIO_LABEL)
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    ax_y.legend(fontsize=8, loc="best")
    fig.suptitle(title if title is not None else "Scores along the merge ratio")
    return _save_png(fig, path)


LEARNING_SIZE = (7.0, 4.5)


def plot_learning_curves(curves: dict[str, dict[int, float]], path, full_sizes: dict[str, int] | None = None,
                         metric: str = "composite", title: str | None = None,
                         forgot: dict[str, set[int]] | None = None) -> Path:
    """Write :func:`learning_curves_figure` as a PNG at ``path``; returns the path."""
    return _save_png(learning_curves_figure(curves, full_sizes=full_sizes, metric=metric, title=title, forgot=forgot),
                     path)


def learning_curves_figure(curves: dict[str, dict[int, float]], full_sizes: dict[str, int] | None = None,
                           metric: str = "composite", title: str | None = None,
                           forgot: dict[str, set[int]] | None = None) -> Figure:
    """The few-shot learning curves (the forgetting study's Figure 4): x = training examples, y = ``metric``.

    ``curves`` maps each initialisation to ``{n_examples: score}``; one line per initialisation,
    x on a log2 axis. ``full_sizes`` marks which point of each line is the full training set;
    ``forgot`` the points whose forgetting gate failed (circled in red). Returns the figure.
    """
    if not curves or not any(curves.values()):
        raise ValueError("no learning-curve points to plot")
    fig = _new_figure(LEARNING_SIZE)
    ax = fig.add_subplot()
    for i, (init, pts) in enumerate(curves.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker=PARENT_MARKERS[i % len(PARENT_MARKERS)], label=_text(init))
        full = (full_sizes or {}).get(init)
        if full in pts:
            ax.annotate("full", (full, pts[full]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    bad = [(x, curves[i][x]) for i, xs in (forgot or {}).items() if i in curves for x in xs if x in curves[i]]
    if bad:
        ax.scatter([b[0] for b in bad], [b[1] for b in bad], s=160, facecolors="none", edgecolors="red",
                   linewidths=1.5, zorder=3, label="forgetting gate failed")
    ax.set_xscale("log", base=2)
    xs = sorted({x for pts in curves.values() for x in pts})
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("training examples")
    ax.set_ylabel(f"{metric} (0–1)")
    ax.set_title(_text(title or f"Few-shot learning curves ({metric})"))
    ax.grid(True, alpha=0.3)
    ax.legend(title="initialisation", fontsize=8)
    return fig
