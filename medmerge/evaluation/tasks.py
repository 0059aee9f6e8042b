"""Task and suite loading: the YAMLs in ``medmerge/tasks``, from the Hub or a local data dir.

One setting switches the data source: ``data_dir``. Without it a task reads its public Hub
dataset through lm-eval as usual; with it, the files named under the YAML's
``metadata.local`` are read from ``data_dir`` (JSON Lines in the normalised shape), rows
are filtered by ``metadata.local.where``, and their fields are checked before lm-eval runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from medmerge.errors import MedmergeError

TASKS_DIR = Path(str(files("medmerge") / "tasks"))


class EvalError(MedmergeError):
    """A task, suite or data file cannot be used."""


def resolve_data_dir(value: str | Path | None) -> str | None:
    """``None`` (the Hub), a directory, or ``"sample"``: the evaluation sample shipped in the package."""
    if value == "sample":
        return str(files("medmerge") / "resources" / "eval_sample")
    return None if value is None else str(value)


def available_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("mm_*.yaml"))


def load_suites() -> dict[str, dict]:
    return yaml.safe_load((TASKS_DIR / "suites.yaml").read_text())


def suite_tasks(suites: list[str]) -> dict[str, list[str]]:
    known = load_suites()
    out = {}
    for s in suites:
        if s not in known:
            raise EvalError(f"unknown suite {s!r}; known suites: {', '.join(known)}")
        out[s] = list(known[s]["tasks"])
    return out


@dataclass
class TaskSpec:
    """A task ready for lm-eval: its config dict and the hash that identifies its data and prompt."""

    name: str
    config: dict[str, Any]
    config_hash: str
    data_files: dict[str, Path]


def _yaml_text(path: Path) -> str:
    text = path.read_text()
    for line in text.splitlines():
        if line.startswith("include:"):
            text = (path.parent / line.split(":", 1)[1].strip().strip("'\"")).read_text() + "\n" + text
    return text


def _read_jsonl(path: Path, task: str) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):   # noqa: B007 (i names the bad line below)
                if line.strip():
                    rows.append(json.loads(line))
    except ValueError as exc:
        raise EvalError(f"{path} (task {task}): line {i} is not valid JSON: {exc}") from exc
    return rows


def _check_rows(rows: list[dict], fields: list[str], path: Path, task: str) -> None:
    if not rows:
        raise EvalError(f"{path} (task {task}) has no records")
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise EvalError(f"{path} (task {task}): record {i} lacks field(s) {', '.join(missing)}")
        if "choices" in fields and (not isinstance(row["choices"], list) or len(row["choices"]) < 2):
            raise EvalError(f"{path} (task {task}): record {i} has no list of choices")
        if "answer" in fields and not (isinstance(row["answer"], int) and 0 <= row["answer"] < len(row["choices"])):
            raise EvalError(f"{path} (task {task}): record {i} has answer {row['answer']!r}, not an index into choices")


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _include_lm_eval(config: dict, digest) -> dict:
    """``include_lm_eval: <path under lm_eval/tasks>``: lm-eval's own task YAML (its includes and
    ``!function`` utilities resolved by lm-eval's loader, from the installed lm-eval), under the keys of
    ours; ``metadata`` is merged one level deep. Its text goes into the task's hash."""
    from lm_eval.tasks._yaml_loader import load_yaml

    rel = config.pop("include_lm_eval", None)
    if rel is None:
        return config
    stock_path = lm_eval_tasks_dir() / rel
    if not stock_path.exists():
        raise EvalError(f"the installed lm-eval has no task file {rel} (lm_eval/tasks); the task needs it")
    stock = load_yaml(stock_path)
    digest.update(_yaml_text(stock_path).encode())
    metadata = {**stock.get("metadata", {}), **config.get("metadata", {})}
    return {**stock, **config, "metadata": metadata}


def _json_splits(data_files: dict[str, str], **_metadata):
    """The local files as one dataset per split, each read on its own (lm-eval's ``custom_dataset``):
    ``datasets``' json builder infers one schema from the first file and refuses a later split with a field
    the first lacks (MMLU-Pro's exemplars carry ``cot_content``, its test questions do not)."""
    import datasets

    return datasets.DatasetDict({split: datasets.load_dataset("json", data_files=f, split="train")
                                 for split, f in data_files.items()})


def task_spec(name: str, data_dir: str | Path | None = None) -> TaskSpec:
    """Load task ``name`` (a YAML stem), switching to ``data_dir`` files when given."""
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's loader: resolves include and !function

    path = TASKS_DIR / f"{name}.yaml"
    if not path.exists():
        raise EvalError(f"unknown task {name!r}; known tasks: {', '.join(available_tasks())}")
    config = load_yaml(path)
    digest = hashlib.sha256(_yaml_text(path).encode())
    config = _include_lm_eval(config, digest)
    local = dict(config.get("metadata", {}).pop("local", {}))
    data_files: dict[str, Path] = {}
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise EvalError(f"data directory {data_dir} does not exist")
        where = local.get("where", {})
        fields = local.get("fields", [])
        for split, rel in local["files"].items():
            f = data_dir / rel
            if not f.exists():
                hint = local.get("hints", {}).get(split)   # what the file holds, where the YAML says it
                raise EvalError(f"task {name} needs data file {f}, which does not exist"
                                + (f" ({hint})" if hint else ""))
            rows = [r for r in _read_jsonl(f, name) if all(r.get(k) == v for k, v in where.items())]
            _check_rows(rows, fields.get(split, []) if isinstance(fields, dict) else fields, f, name)
            data_files[split] = f
            digest.update(f"{split}:{rel}:{where}".encode())
            digest.update(hashlib.sha256(f.read_bytes()).digest())
        for key in ("training_split", "validation_split", "fewshot_split"):
            if config.get(key) not in (None, *data_files):
                config.pop(key)  # that split has no local file: lm-eval samples shots elsewhere
        config["dataset_path"] = "json"
        config.pop("dataset_name", None)
        config["dataset_kwargs"] = {"data_files": {s: str(f) for s, f in data_files.items()}}
        if len(data_files) > 1:  # each file read on its own: splits may differ in fields (CoT exemplars)
            config["custom_dataset"] = _json_splits
        if "process_docs" in local:  # the local files' shape -> the docs the task's prompts read
            config["process_docs"] = local["process_docs"]
        elif where:
            config["process_docs"] = lambda ds, where=where: ds.filter(
                lambda d: all(d.get(k) == v for k, v in where.items()))
        else:
            config.pop("process_docs", None)
    config.pop("include", None)
    return TaskSpec(name=name, config=config, config_hash=digest.hexdigest(), data_files=data_files)
