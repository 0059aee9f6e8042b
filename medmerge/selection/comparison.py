"""The comparison table of a merge search (the hierarchical study's Table IV:
"A Novel Hierarchical Integration Method for Efficient Model Merging in Medical LLMs") and its figure.

One row per candidate plus the parents; one column per task: its accuracy ± stderr (the
task's primary metric, see :func:`medmerge.evaluation.objectives.primary_metric`). Then:

* ``mean`` — the unweighted mean of the row's task scores, stderr ``sqrt(Σ se_i²) / k``;
* ``Δ better parent`` — the row's mean minus the higher of the two parents' means;
* ``rank`` — 1 for the highest mean (ties share a rank);
* the best value in each column is marked (``**bold**`` in Markdown, ``best`` in JSON; ties all).

The figure draws grouped bars, one group per task and one bar per row, with stderr error bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmerge.evaluation.objectives import primary_metric
from medmerge.io.tables import markdown_table


def build(rows: Sequence[dict[str, Any]]) -> dict:
    """``rows``: ``{"name", "method", "params", "role", "report"}`` (role "clinical"/"instruct" for the
    parents). Returns the JSON-serialisable comparison (see the module docstring)."""
    if not rows:
        raise ValueError("comparison of no rows")
    ordered = sorted(rows, key=lambda r: (r.get("role") is None, r.get("role") or ""))  # parents first
    tasks = []
    for r in ordered:
        for t in r["report"].tasks:
            if t not in tasks:
                tasks.append(t)
    out_rows = []
    for r in ordered:
        cells: dict[str, dict[str, Any] | None] = {}
        for t in tasks:
            tr = r["report"].tasks.get(t)
            if tr is None:
                cells[t] = None
                continue
            metric = primary_metric(tr)
            mv = tr.metrics[metric]
            cells[t] = {"metric": metric, "value": mv.value, "stderr": mv.stderr}
        known = [c for c in cells.values() if c is not None]
        ses = [c["stderr"] for c in known if c["stderr"] is not None]
        mean = sum(c["value"] for c in known) / len(known) if known else None
        out_rows.append({"name": r["name"], "method": r.get("method"), "params": r.get("params") or {},
                         "role": r.get("role"), "tasks": cells,
                         "mean": mean, "mean_stderr": math.sqrt(sum(s * s for s in ses)) / len(known) if ses else None})
    parent_means = [r["mean"] for r in out_rows if r["role"] and r["mean"] is not None]
    better = max(parent_means) if parent_means else None
    means = sorted({r["mean"] for r in out_rows if r["mean"] is not None}, reverse=True)
    for r in out_rows:
        r["delta_better_parent"] = None if better is None or r["mean"] is None else r["mean"] - better
        r["rank"] = None if r["mean"] is None else 1 + sum(1 for m in means if m > r["mean"])
    best = {}
    for t in tasks:
        vals = [r["tasks"][t]["value"] for r in out_rows if r["tasks"][t] is not None]
        best[t] = max(vals) if vals else None
    best["mean"] = means[0] if means else None
    for r in out_rows:
        for t in tasks:
            if r["tasks"][t] is not None:
                r["tasks"][t]["best"] = r["tasks"][t]["value"] == best[t]
        r["mean_best"] = r["mean"] is not None and r["mean"] == best["mean"]
    return {"tasks": tasks, "rows": out_rows, "best": best, "better_parent_mean": better}


def _pm(value, se) -> str:
    return f"{value:.4f}" if se is None else f"{value:.4f} ± {se:.4f}"


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def to_markdown(cmp: dict) -> str:
    """The comparison as a Markdown table (best per column in bold)."""
    tasks = cmp["tasks"]
    head = ["rank", "candidate", "method", "parameters", *(t.removeprefix("mm_") for t in tasks), "mean",
            "Δ better parent"]
    rows = []
    for r in sorted(cmp["rows"], key=lambda r: (r["rank"] is None, r["rank"] or 0, r["name"])):
        as_parent = r["role"] is not None and r["name"] == r["role"]   # the parent itself, not a merge of it
        cells = [str(r["rank"] or ""), r["name"] + (f" (parent: {r['role']})" if r["role"] else ""),
                 "" if as_parent else r["method"] or "", "" if as_parent else _params(r["params"])]
        for t in tasks:
            c = r["tasks"][t]
            text = "" if c is None else _pm(c["value"], c["stderr"])
            cells.append(f"**{text}**" if c is not None and c["best"] else text)
        mean = "" if r["mean"] is None else _pm(r["mean"], r["mean_stderr"])
        cells.append(f"**{mean}**" if r["mean_best"] else mean)
        d = r["delta_better_parent"]
        cells.append("" if d is None else f"{d:+.4f}")
        rows.append(cells)
    lines = [markdown_table(head, rows)]
    metrics = sorted({c["metric"] for r in cmp["rows"] for c in r["tasks"].values() if c is not None})
    lines.append("")
    lines.append(f"Scores: {', '.join(metrics)} ± stderr; **bold** = best in its column; mean = unweighted mean of "
                 "the tasks; Δ better parent = mean − the higher parent mean; rank by mean.")
    return "\n".join(lines) + "\n"


def plot(cmp: dict, path) -> Path:
    """Grouped bars: one group per task, one bar per row, stderr error bars. Returns the PNG path."""
    from medmerge.selection.figures import _new_figure, _save_png, _text

    tasks, rows = cmp["tasks"], cmp["rows"]
    n = len(rows)
    fig = _new_figure((max(7.0, 1.2 + len(tasks) * (0.25 * n + 0.4)), 5.0))
    ax = fig.add_subplot()
    width = 0.8 / n
    for i, r in enumerate(rows):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(tasks))]
        ys = [r["tasks"][t]["value"] if r["tasks"][t] else 0.0 for t in tasks]
        errs = [(r["tasks"][t]["stderr"] or 0.0) if r["tasks"][t] else 0.0 for t in tasks]
        label = r["name"] + (" (parent)" if r["role"] else "")
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=_text(label), color=f"C{i % 10}",
               hatch="//" if r["role"] else None, edgecolor="black" if r["role"] else None, linewidth=0.5)
    ax.set_xticks(range(len(tasks)), [_text(t.removeprefix("mm_")) for t in tasks], rotation=20, ha="right")
    ax.set_ylabel("accuracy ± stderr")
    ax.set_title("Per-task scores of every candidate and the parents")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, n // 12), loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save_png(fig, path)


def write(rows: Sequence[dict[str, Any]], out_dir) -> dict[str, Path]:
    """comparison.md, comparison.json and figures/comparison.png under ``out_dir``."""
    import json

    from medmerge.io.atomic import write_text_atomic

    out_dir = Path(out_dir)
    cmp = build(rows)
    return {"md": write_text_atomic(out_dir / "comparison.md", to_markdown(cmp)),
            "json": write_text_atomic(out_dir / "comparison.json", json.dumps(cmp, indent=2) + "\n"),
            "png": plot(cmp, out_dir / "figures" / "comparison.png")}
