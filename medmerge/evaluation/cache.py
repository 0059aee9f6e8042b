"""Evaluation results cached per (candidate identity, task config, settings).

lm-eval's own request cache keys on prompts only, with no model identity, so it would hand
one candidate's answers to another. Our key is made of what determines a score: the
candidate's identity (its recipe with every parent replaced by the sha256 of its weights,
or a checkpoint's weight hashes), the task's config hash (prompt YAML plus data files) and
the evaluation settings (shots, limit, generation length, lm-eval version).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from medmerge.evaluation.report import TaskResult
from medmerge.io.hashing import cache_dir


def cache_key(identity: str, config_hash: str, settings: dict) -> str:
    blob = json.dumps({"identity": identity, "task": config_hash, "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class EvalCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else cache_dir() / "eval"
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def _samples_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.samples.jsonl"

    def get(self, key: str, samples: bool = False) -> TaskResult | None:
        """The cached result, or None; with ``samples``, only a result whose per-sample records were
        cached too (a result cached without them is a miss: the task runs again to record them)."""
        p = self._path(key)
        try:
            result = TaskResult.model_validate_json(p.read_text())
            if samples:
                f = self._samples_path(key)
                lines = f.read_text(encoding="utf-8").splitlines()
                result = result.model_copy(update={"samples": [json.loads(x) for x in lines if x.strip()],
                                                   "samples_file": str(f)})
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return result

    def put(self, key: str, result: TaskResult) -> TaskResult:
        """Store the result; its per-sample records (when it holds them) beside it, written first so a
        result on disk always has its samples when they were recorded. Returns the result with
        ``samples_file`` set when it has records (the stored JSON never names them: a later run that did
        not ask for samples gets none)."""
        from medmerge.evaluation.report import samples_jsonl
        from medmerge.io.atomic import write_text_atomic

        stored = result.model_dump_json(exclude={"samples_file"})
        if result.samples is not None:
            f = write_text_atomic(self._samples_path(key), samples_jsonl(result.samples))
            result = result.model_copy(update={"samples_file": str(f)})
        write_text_atomic(self._path(key), stored)
        return result


class DocumentCache:
    """Per-document results of a document range (racing, :mod:`medmerge.selection.race_search`), one JSON file per
    (candidate identity, task config, settings, documents): a list of ``{"metric,filter": value}``, one per
    document, with no document text. Written atomically, so a killed race leaves whole ranges only."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root else cache_dir() / "eval" / "documents"
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(identity: str, config_hash: str, settings: dict, documents) -> str:
        return cache_key(identity, config_hash, {**settings, "documents": [int(d) for d in documents]})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, n: int) -> list[dict] | None:
        """The ``n`` documents' results stored under ``key``, or None (missing, unreadable or of another length)."""
        try:
            docs = json.loads(self._path(key).read_text())
            if not (isinstance(docs, list) and len(docs) == n and all(isinstance(d, dict) for d in docs)):
                raise ValueError("not a range's results")
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return docs

    def put(self, key: str, documents: list[dict]) -> None:
        from medmerge.io.atomic import write_text_atomic

        write_text_atomic(self._path(key), json.dumps(documents))
