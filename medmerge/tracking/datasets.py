"""The data a run used, as MLflow datasets: name, digest and source, never rows.

MLflow shows a run's datasets on its page and links them to the models logged from the run, so the
lineage from data to registered model is visible in the UI. The digest is the content hash medmerge
already keys its caches on (first 16 hex digits; the full hash sits in the profile):

* evaluation: one dataset per benchmark task, digest = the task's ``config_hash`` (its YAML and
  data), profile = number of documents scored;
* fine-tuning: the training and held-out splits, digest = ``train_sha256`` / ``eval_sha256``.
"""

from __future__ import annotations

import json
from typing import Any

CONTEXT_TAG = "mlflow.data.context"


def entity(name: str, sha256: str, source: str, rows: int | None = None):
    from mlflow.entities import Dataset

    profile = {"sha256": sha256, **({"rows": rows} if rows is not None else {})}
    return Dataset(name=name, digest=sha256[:16], source_type="code", source=json.dumps({"uri": source}),
                   profile=json.dumps(profile))


def log(c, run_id: str, datasets: list[tuple[Any, str]]) -> None:
    """Log ``[(Dataset, context), ...]`` (context: ``evaluation``, ``training`` ...) as inputs of ``run_id``."""
    from mlflow.entities import DatasetInput, InputTag

    if datasets:
        c.log_inputs(run_id, datasets=[DatasetInput(dataset=d, tags=[InputTag(key=CONTEXT_TAG, value=ctx)])
                                       for d, ctx in datasets])


def evaluation_datasets(report) -> list[tuple[object, str]]:
    """One dataset per task of an evaluation report (``EvalReport``)."""
    return [(entity(task, res.config_hash, f"medmerge task {task}", res.n_samples), "evaluation")
            for task, res in sorted(report.tasks.items()) if res.config_hash]
