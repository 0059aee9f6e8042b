"""The evaluation report: per-task metrics with stderr, the suites' scores (Medical Avg, IF score, ...) with theirs,
provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

from medmerge.io.tables import text_table

# how the report's table shows a suite score: (label, what it is); a score not listed shows its own name
SCORE_ROWS = {"medical_avg": ("Medical Avg", "acc (mean of tasks)"), "if_score": ("IF score", "mean(prompt, inst strict)")}


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
    # the suites' scores with their stderrs, under their names (medmerge.evaluation.objectives.suite_scores: the
    # clinical suite's medical_avg, IFEval's if_score, ...), computed once in make_report and stored only here
    scores: dict[str, MetricValue] = Field(default_factory=dict)
    lm_eval_version: str
    medmerge_version: str
    settings: dict = Field(default_factory=dict)
    seconds: float
    cached_tasks: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_copy(cls, data):
        """A report written before the scores were kept once also held Medical Avg and IF score as fields:
        they are ``scores``' values, dropped on reading."""
        if isinstance(data, dict) and ("medical_avg" in data or "if_score" in data):
            data = {k: v for k, v in data.items() if k not in ("medical_avg", "if_score")}
        return data

    def score(self, name: str) -> float | None:
        """The value of the suite score ``name`` (None when its suite was not run)."""
        s = self.scores.get(name)
        return None if s is None else s.value

    @property
    def medical_avg(self) -> float | None:
        """The forgetting study's Medical Avg, ``scores["medical_avg"]``'s value (None without the clinical suite)."""
        return self.score("medical_avg")

    @property
    def if_score(self) -> float | None:
        """The forgetting study's IF score, ``scores["if_score"]``'s value (None without IFEval)."""
        return self.score("if_score")

    def table(self) -> str:
        rows = [("task", "metric", "value", "stderr")]
        for t in self.tasks.values():
            for m, v in t.metrics.items():
                rows.append((t.alias or t.task, m, f"{v.value:.4f}", "" if v.stderr is None else f"{v.stderr:.4f}"))
        for name, score in self.scores.items():   # every suite score, under its label
            label, how = SCORE_ROWS.get(name, (name, "suite score"))
            rows.append((label, how, f"{score.value:.4f}", "" if score.stderr is None else f"{score.stderr:.4f}"))
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
