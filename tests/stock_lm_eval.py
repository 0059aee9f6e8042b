"""Stock lm-eval as its own CLI runs it (``lm_eval run --model hf ...``), on local files: the reference the
evaluation tests compare medmerge with. Only the data location of lm-eval's task YAML changes (``include:``
of the installed YAML, ``dataset_path: json``), as ../shared/data's README says to point lm-eval at a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def stock_task(include_dir: Path, name: str, stock_yaml: str, data_files: dict[str, Path]) -> str:
    """Write ``<include_dir>/<name>.yaml``: lm-eval's ``stock_yaml`` (a path under lm_eval/tasks) reading
    ``data_files`` (``{split: file}``) instead of its Hub dataset. Returns ``name``."""
    from medmerge.evaluation.tasks import lm_eval_tasks_dir

    include_dir.mkdir(parents=True, exist_ok=True)
    doc = {"include": str(lm_eval_tasks_dir() / stock_yaml), "task": name, "dataset_path": "json",
           "dataset_name": None, "dataset_kwargs": {"data_files": {k: str(v) for k, v in data_files.items()}}}
    (include_dir / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return name


def run_cli(monkeypatch, model_dir: Path, task: str, include_dir: Path, out_dir: Path, *flags: str):
    """``lm_eval run --model hf --model_args pretrained=MODEL_DIR,dtype=float32 --tasks TASK --include_path
    DIR --log_samples --output_path OUT FLAGS``, in this process; returns ``(results, samples)`` as the CLI
    wrote them (``results_*.json``; ``samples_<task>_*.jsonl`` as a list of records)."""
    from lm_eval.__main__ import cli_evaluate

    argv = ["lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32",
            "--tasks", task, "--include_path", str(include_dir), "--log_samples", "--output_path", str(out_dir),
            "--batch_size", "8", *flags]
    monkeypatch.setattr(sys, "argv", argv)
    cli_evaluate()
    results = json.loads(next(out_dir.rglob("results_*.json")).read_text())
    samples_file = next(out_dir.rglob(f"samples_{task}_*.jsonl"))
    return results, [json.loads(x) for x in samples_file.read_text(encoding="utf-8").splitlines() if x.strip()]


def prompts(records: list[dict]) -> list[dict]:
    """The request arguments (prompt, continuation or generation settings) of each record, by doc."""
    return [r["arguments"] for r in sorted(records, key=lambda r: r["doc_id"])]
