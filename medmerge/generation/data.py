"""Clinical generation datasets: one loader for the public tasks and for user-supplied files.

:func:`load_task` returns a list of :class:`GenerationExample` (``id``, ``input``, ``target``
and every other field under ``extra``). ``source`` is either

* a **known task name** (a key of :data:`TASKS`), read from a data directory laid out as
  ``<data_dir>/<task>/<split>.jsonl`` — the normalised JSON Lines shape of the project's
  public data folder. The directory is the ``data_dir`` argument, else the
  ``MEDMERGE_DATA_DIR`` environment variable; the package itself never assumes a location.
  ``split`` names one file stem (``train``, ``validation``, ``test1``, ...); ``"test"`` means
  ``test.jsonl`` where it exists, else every ``test*.jsonl`` in name order (``test1``,
  ``test2``, ...); ``None`` loads every split file (``train``, ``validation``, then the test
  files, then any others), each record keeping its own ``split`` field in ``extra``; or
* **any JSON Lines or CSV file** (``.jsonl``/``.json``/``.ndjson``, ``.csv``, ``.tsv``; or pass
  ``fmt="jsonl"|"csv"|"tsv"``) with one row per example. The three columns default to ``id``,
  ``input``, ``target`` and can be renamed with ``id_field``, ``input_field``, ``target_field``.
  With ``split`` given, rows are filtered on the file's ``split`` column (an error if it has
  none).

Credentialed tasks (bring your own files)
-----------------------------------------
The MIMIC-IV "Brief Hospital Course" (BHC) summarisation task and the problem-list
summarisation task (BioNLP 2023 ProbSum) are built on MIMIC, which is credentialed
(PhysioNet data use agreement). medmerge ships none of that data and never downloads it.
Users with PhysioNet access export their own split to a JSON Lines or CSV file with one row
per example and three columns — a unique id, the source text, the reference text — and pass
the path, naming the columns if they differ, e.g.::

    # bhc_train.jsonl: {"note_id": "...", "discharge_text": "...", "brief_hospital_course": "..."}
    train = load_task("/secure/mimic/bhc_train.jsonl", id_field="note_id",
                      input_field="discharge_text", target_field="brief_hospital_course")

    # probsum_dev.csv with header: File ID,Subjective Sections,Summary
    dev = load_task("/secure/mimic/probsum_dev.csv", id_field="File ID",
                    input_field="Subjective Sections", target_field="Summary")

Keep such files outside the repository and out of artifacts; the public stand-in for
problem-oriented summaries is ``aci_bench_assessment_plan``.

Errors are :class:`DataError` (a :class:`~medmerge.errors.MedmergeError`) and name the file
(and line, where there is one): missing file or task directory, unknown split, a line that is
not valid JSON / CSV, missing columns, and ``null`` or non-text values in the three columns.
Empty or whitespace-only text is *not* rejected here: that is a data-quality finding that
:mod:`medmerge.generation.validation` reports together with the other checks.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from medmerge.errors import MedmergeError

__all__ = ["TASKS", "DataError", "GenerationExample", "load_task", "task_splits"]

#: Known public generation tasks -> their sub-folder of the data directory.
TASKS: dict[str, str] = {
    "mts_dialog": "mts_dialog",
    "aci_bench": "aci_bench",
    "aci_bench_assessment_plan": "aci_bench_assessment_plan",
    "indiana_cxr": "indiana_cxr",
    "primock57": "primock57",
}

DATA_DIR_ENV = "MEDMERGE_DATA_DIR"

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_CSV_SUFFIXES = {".csv": "csv", ".tsv": "tsv"}


class DataError(MedmergeError):
    """A generation dataset cannot be read: missing file, bad JSON/CSV line, missing columns."""


class GenerationExample(BaseModel):
    """One source -> reference pair. ``extra`` holds every other field of the record."""

    model_config = ConfigDict(frozen=True)

    id: str
    input: str
    target: str
    extra: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def load_task(
    source: str | os.PathLike[str],
    split: str | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    id_field: str = "id",
    input_field: str = "input",
    target_field: str = "target",
    fmt: str | None = None,
) -> list[GenerationExample]:
    """Load a generation task (known name) or a user JSONL/CSV file; see the module docstring."""
    fields = (id_field, input_field, target_field)
    if isinstance(source, str) and source in TASKS and not Path(source).is_file():
        files = _task_files(source, split, data_dir)
        out: list[GenerationExample] = []
        for path in files:
            out.extend(_load_file(path, fields, fmt="jsonl"))
        return out

    path = Path(source)
    if not path.exists():
        raise DataError(
            f"{path}: no such file (and {str(source)!r} is not a known task: "
            f"{', '.join(sorted(TASKS))})")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; pass a .jsonl or .csv file, or a known task name")
    examples = _load_file(path, fields, fmt=fmt)
    if split is None:
        return examples
    if examples and any("split" not in ex.extra for ex in examples):
        raise DataError(f"{path}: split={split!r} given but the file has no 'split' column")
    return [ex for ex in examples if str(ex.extra.get("split")) == split]


def task_splits(task: str, data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The split file stems available for a known task, in loading order."""
    return [p.stem for p in _split_files(_task_dir(task, data_dir))]


# --------------------------------------------------------------------------------------------
# task directories
# --------------------------------------------------------------------------------------------

def _task_dir(task: str, data_dir: str | os.PathLike[str] | None) -> Path:
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; known: {', '.join(sorted(TASKS))}")
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not root:
        raise DataError(
            f"task {task!r}: no data directory; pass data_dir= or set {DATA_DIR_ENV}")
    d = Path(root) / TASKS[task]
    if not d.is_dir():
        raise DataError(f"task {task!r}: data directory {d} does not exist")
    return d


def _split_order(stem: str) -> tuple[int, str]:
    rank = {"train": 0, "validation": 1, "dev": 1}.get(stem)
    if rank is None:
        rank = 2 if stem.startswith("test") else 3
    return rank, stem


def _split_files(d: Path) -> list[Path]:
    return sorted((p for p in d.glob("*.jsonl") if p.is_file()), key=lambda p: _split_order(p.stem))


def _task_files(task: str, split: str | None, data_dir) -> list[Path]:
    d = _task_dir(task, data_dir)
    available = _split_files(d)
    if not available:
        raise DataError(f"task {task!r}: no .jsonl split files in {d}")
    if split is None:
        return available
    exact = d / f"{split}.jsonl"
    if exact.is_file():
        return [exact]
    if split == "test":
        tests = [p for p in available if p.stem.startswith("test")]
        if tests:
            return tests
    raise DataError(
        f"task {task!r}: no split {split!r} ({exact} not found); available: "
        f"{', '.join(p.stem for p in available)}")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

def _detect_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt in {"json", "ndjson"}:
            fmt = "jsonl"
        if fmt not in {"jsonl", "csv", "tsv"}:
            raise DataError(f"{path}: unknown format {fmt!r}; use 'jsonl', 'csv' or 'tsv'")
        return fmt
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _CSV_SUFFIXES:
        return _CSV_SUFFIXES[suffix]
    raise DataError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
        f"use .jsonl or .csv, or pass fmt='jsonl'|'csv'|'tsv'")


def _load_file(path: Path, fields: tuple[str, str, str], fmt: str | None) -> list[GenerationExample]:
    kind = _detect_format(path, fmt)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = _iter_jsonl(path) if kind == "jsonl" else _iter_csv(path, fields, "\t" if kind == "tsv" else ",")
    try:
        return [_to_example(path, lineno, rec, fields) for lineno, rec in rows]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})") from e
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def _iter_csv(path: Path, fields: tuple[str, str, str], delimiter: str) -> Iterator[tuple[int, dict]]:
    # Clinical notes can exceed the csv module's default 128 KiB field limit.
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (no header row)")
            missing = [c for c in fields if c not in header]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(map(repr, missing))}; "
                    f"header has {', '.join(map(repr, header))}")
            for row in reader:
                lineno = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{lineno}: unreadable CSV row: {len(row)} field(s), "
                        f"header has {len(header)}")
                yield lineno, dict(zip(header, row))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({e})") from e


def _to_example(path: Path, lineno: int, rec: dict, fields: tuple[str, str, str]) -> GenerationExample:
    id_field, input_field, target_field = fields
    missing = [c for c in fields if c not in rec]
    if missing:
        raise DataError(
            f"{path}:{lineno}: missing column(s) {', '.join(map(repr, missing))}; "
            f"record has {', '.join(map(repr, rec)) or 'no fields'}")
    rid = rec[id_field]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f"{path}:{lineno}: {id_field!r} must be a string or integer, got {_kind(rid)}")
    values = {}
    for name, col in (("input", input_field), ("target", target_field)):
        v = rec[col]
        if not isinstance(v, str):
            raise DataError(f"{path}:{lineno}: {col!r} must be text, got {_kind(v)}")
        values[name] = v
    extra = {k: v for k, v in rec.items() if k not in fields}
    return GenerationExample(id=str(rid), input=values["input"], target=values["target"], extra=extra)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__
