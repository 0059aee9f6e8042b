"""The evaluation report: per-task metrics with stderr, Medical Avg, IF score, provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field

from medmerge.io.tables import text_table


class MetricValue(BaseModel):
    value: float
    stderr: float | None = None


class TaskResult(BaseModel):
    task: str
    alias: str | None = None
    metrics: dict[str, MetricValue]
    n_samples: int
    num_fewshot: int
    config_hash: str
    # lm-eval's per-sample records (settings.log_samples); never in the report's JSON, so a report (and the
    # MLflow run it is logged to) holds no document text unless the samples are written on request
    samples: list[dict] | None = Field(default=None, exclude=True)
    # where the evaluation cache keeps those records (set only when they were asked for): a path, no text,
    # so they reach a later pipeline step (log_search) that receives the report through ZenML's store
    samples_file: str | None = None

    def sample_records(self) -> list[dict] | None:
        """The per-sample records: held in memory, else read from ``samples_file``; None when not kept."""
        if self.samples is not None:
            return self.samples
        if self.samples_file and Path(self.samples_file).is_file():
            lines = Path(self.samples_file).read_text(encoding="utf-8").splitlines()
            return [json.loads(x) for x in lines if x.strip()]
        return None


class EvalReport(BaseModel):
    model: str
    model_fingerprint: str
    suites: list[str]
    tasks: dict[str, TaskResult]
    medical_avg: float | None = None
    if_score: float | None = None
    # the suites' scores with their stderrs (medmerge.evaluation.objectives.suite_scores), computed once in make_report;
    # medical_avg and if_score above are their values
    scores: dict[str, MetricValue] = Field(default_factory=dict)
    lm_eval_version: str
    medmerge_version: str
    settings: dict = Field(default_factory=dict)
    seconds: float
    cached_tasks: list[str] = Field(default_factory=list)

    def table(self) -> str:
        rows = [("task", "metric", "value", "stderr")]
        for t in self.tasks.values():
            for m, v in t.metrics.items():
                rows.append((t.alias or t.task, m, f"{v.value:.4f}", "" if v.stderr is None else f"{v.stderr:.4f}"))
        for name, label, how in (("medical_avg", "Medical Avg", "acc (mean of tasks)"),
                                 ("if_score", "IF score", "mean(prompt, inst strict)")):
            value = getattr(self, name)
            if value is not None:
                se = self.scores[name].stderr if name in self.scores else None
                rows.append((label, how, f"{value:.4f}", "" if se is None else f"{se:.4f}"))
        return text_table(rows)

    def write(self, path: str | os.PathLike) -> Path:
        from medmerge.io.atomic import write_text_atomic

        return write_text_atomic(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")

    def write_samples(self, directory: str | os.PathLike) -> list[Path]:
        """``samples_<task>.jsonl`` per task that holds lm-eval's per-sample records (``log_samples``),
        one record a line as ``lm_eval --log_samples`` writes them; nothing (not even the directory)
        when no task does."""
        from medmerge.io.atomic import write_text_atomic

        records = {task: t.sample_records() for task, t in self.tasks.items()}
        return [write_text_atomic(Path(directory) / f"samples_{task}.jsonl", samples_jsonl(r))
                for task, r in records.items() if r is not None]


def samples_jsonl(samples: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in samples)
