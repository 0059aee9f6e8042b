"""Table 2 of the forgetting study ("Countering Catastrophic Forgetting of Large Language Models for
Better Instruction Following via Weight-Space Model Merging"): the generation tasks side by side.

Rows are (initialisation, shots), shots 0 meaning no SFT; columns are tasks; each cell is the
composite (the mean of BLEU, METEOR, ROUGE-1/2/L and BERTScore F1) of that model's generations on
the task's held-out split. The best cell of each column is marked (``**bold**`` in Markdown,
``best`` in JSON; ties all). A row that failed its forgetting gate is flagged ``(forgot)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from medmerge.io.tables import markdown_table


def _shot_key(s: str):
    return (s == "full", int(s) if s != "full" else 0)


def build(results_by_task: Mapping[str, Iterable], metric: str = "composite") -> dict:
    """``results_by_task``: ``{task: [SFTResult, ...]}``. Returns the JSON-serialisable table."""
    tasks = list(results_by_task)
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    inits: list[str] = []
    for task, results in results_by_task.items():
        for r in results:
            if r.init not in inits:
                inits.append(r.init)
            cells.setdefault((r.init, r.shots), {})[task] = {"value": r.scores[metric],
                                                              "forgot": not r.forgetting.passed}
    keys = sorted(cells, key=lambda k: (inits.index(k[0]), _shot_key(k[1])))
    for t in tasks:
        vals = [cells[k][t]["value"] for k in keys if t in cells[k]]
        best = max(vals) if vals else None
        for k in keys:
            if t in cells[k]:
                cells[k][t]["best"] = cells[k][t]["value"] == best
    return {"metric": metric, "tasks": tasks,
            "rows": [{"init": i, "shots": s, "cells": cells[(i, s)]} for i, s in keys]}


def to_markdown(table: dict) -> str:
    tasks = table["tasks"]
    rows = []
    for row in table["rows"]:
        out = [row["init"], row["shots"]]
        for t in tasks:
            c = row["cells"].get(t)
            if c is None:
                out.append("")
                continue
            v = f"{c['value']:.4f}"
            out.append((f"**{v}**" if c["best"] else v) + (" (forgot)" if c["forgot"] else ""))
        rows.append(out)
    return (markdown_table(["initialisation", "shots", *tasks], rows) + f"\n\nCells: {table['metric']} on each "
            f"task's held-out split; bold: best of its column; shots 0: no SFT.\n")
