"""The demo training corpus shipped inside the package (``medmerge/resources/demo/corpus``).

The files are built at development time by ``scripts/build_demo_corpus.py`` from public
datasets (sources and licences in ``LICENSES.md`` next to them); nothing here reads
outside the installed package.
"""

from __future__ import annotations

import json
from importlib.resources import files

CORPORA = ("general", "clinical", "instruct")
SPLITS = ("train", "heldout")
_CORPUS_DIR = "resources/demo/corpus"


def load_corpus(name: str, split: str | None = None) -> list[dict]:
    """Records of corpus ``name`` (one of :data:`CORPORA`), in file order.

    ``split`` (``"train"`` or ``"heldout"``) keeps only that split; ``None`` keeps all.
    Every record has ``id``, ``split``, ``source`` and ``text``; ``instruct`` records also
    have ``instruction`` and ``response``.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown demo corpus {name!r}; expected one of {CORPORA}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    raw = (files("medmerge") / _CORPUS_DIR / f"{name}.jsonl").read_text(encoding="utf-8")
    records = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]


def as_messages(record: dict) -> list[dict[str, str]]:
    """An ``instruct`` record as a user/assistant conversation for ``apply_chat_template``."""
    return [{"role": "user", "content": record["instruction"]},
            {"role": "assistant", "content": record["response"]}]
