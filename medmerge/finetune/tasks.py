"""Several generation tasks in one finetune run: the forgetting study's Table 2 across tasks.

Each task of ``tasks:`` runs as a finetune of its own (its own validation, parent run, nested runs,
registered model ``<registered_model>-<task>`` and promotion; see :meth:`FinetuneConfig.task_configs`).
This module adds the run that compares them: one MLflow run in the same experiment, tagged
``medmerge.kind = tasks``, holding ``table2.md``/``table2.json`` (rows: initialisation x shots; columns:
tasks; cells: the composite, best per column marked) and one learning-curve figure per task. It holds
scores only, never clinical text.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from medmerge.finetune.artifacts import SFTResult, TrackingRun
from medmerge.finetune.config import FinetuneConfig, FinetuneError
from medmerge.finetune.data import open_parent_run
from medmerge.finetune.summary import plot_curves


class CrossTaskSummary(BaseModel):
    """What the cross-task run logged: Table 2 (Markdown and JSON) and where the figures are."""

    tasks: list[str]
    table2: str
    table2_json: dict
    run: TrackingRun
    figures: dict[str, str] = Field(default_factory=dict)   # task -> learning-curve PNG (local copy)


def group_by_task(cfg: FinetuneConfig, results: list[SFTResult]) -> dict[str, list[SFTResult]]:
    """``{task label: results}`` in the config's task order; a task without results is an error."""
    labels = [label or cfg.task_label for label, _ in cfg.task_configs()]
    out: dict[str, list[SFTResult]] = {t: [] for t in labels}
    for r in results:
        if r.task not in out:
            raise FinetuneError(f"a result names task {r.task!r}, which is not one of this run's: {', '.join(labels)}")
        out[r.task].append(r)
    empty = [t for t, rs in out.items() if not rs]
    if empty:
        raise FinetuneError(f"no results for task(s) {', '.join(empty)}")
    return out


def log_cross_task(cfg: FinetuneConfig, results: list[SFTResult], tracking_uri: str, run_name: str,
                   figures_dir: str | Path | None = None) -> CrossTaskSummary:
    """Open (or resume) the cross-task run, log Table 2 and the per-task learning curves, close it."""
    from medmerge.finetune import table2
    from medmerge.tracking import registry

    by_task = group_by_task(cfg, results)
    t2 = table2.build(by_task)
    md = table2.to_markdown(t2)
    key = hashlib.sha256(json.dumps({"config": cfg.model_dump(mode="json"),
                                     "runs": sorted(r.run_id for r in results)}, sort_keys=True).encode()
                         ).hexdigest()[:32]
    registry.check_reachable(tracking_uri)
    run = open_parent_run(tracking_uri, cfg.experiment, key, f"{run_name}-tasks")
    logged = run.parent_run()
    logged.tag("medmerge.kind", "tasks")
    logged.params({"tasks": ",".join(by_task), "task_runs": ",".join(sorted({r.run_id for r in results}))})
    out = Path(figures_dir or tempfile.mkdtemp(prefix="medmerge-tasks-"))
    figs = {}
    for task, rs in by_task.items():
        figs[task] = str(plot_curves(rs, out / f"learning_curves_{task}.png", task))
        logged.artifact(figs[task], "figures")
    logged.text(md, "table2.md")
    logged.json(t2, "table2.json")
    logged.metrics({f"composite.{task}.{row['init']}-{row['shots']}": cell["value"]
                    for row in t2["rows"] for task, cell in row["cells"].items()})
    logged.describe(f"Table 2 across {len(by_task)} tasks ({', '.join(by_task)}): the composite per initialisation "
                    f"x shots; each task's own run holds its learning curves, forgetting table and registered "
                    f"versions.")
    logged.finish()
    return CrossTaskSummary(tasks=list(by_task), table2=md, table2_json=t2, run=run, figures=figs)
