"""IFEval without downloads: a Punkt sentence tokenizer trained locally.

lm-eval's IFEval checkers count sentences with NLTK's Punkt model and try to download
``punkt_tab`` when it is missing. We train Punkt (NLTK's own unsupervised trainer) on the
English text shipped in the package, save it in the ``punkt_tab`` format under
``$MEDMERGE_CACHE_DIR/nltk_data`` and point both NLTK and lm-eval's checker at it.

How counts may differ from the official model: the official English Punkt model was
trained on a large news corpus and knows many more abbreviations ("Gen.", "Corp.", month
names) and collocations. Ours learns abbreviations from a few hundred KB of dialogue,
clinical and everyday text, so a sentence ending right after an abbreviation it has not
seen may be split where the official model would not (or vice versa). Only the
``length_constraints:number_sentences`` instruction uses sentence counts, so at most that
instruction's verdicts (about 5% of IFEval's instructions) can change.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from importlib.resources import files
from pathlib import Path

from medmerge.io.hashing import cache_dir

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def nltk_data_dir() -> Path:
    return cache_dir() / "nltk_data"


def _training_text() -> str:
    corpus = files("medmerge") / "resources" / "demo" / "corpus"
    texts = []
    for name in ("general.jsonl", "clinical.jsonl"):
        for line in (corpus / name).read_text(encoding="utf-8").split("\n"):
            if line.strip():
                texts.append(json.loads(line)["text"])
    return "\n\n".join(texts)


def ensure_punkt() -> Path:
    """Make ``punkt_tab/english`` available to NLTK, training it once if needed; return its dir."""
    import nltk
    from nltk.tokenize.punkt import PunktTrainer, save_punkt_params

    root = nltk_data_dir()
    lang_dir = root / "tokenizers" / "punkt_tab" / "english"
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    if not all((lang_dir / f).exists() for f in PUNKT_FILES):
        lang_dir.parent.mkdir(parents=True, exist_ok=True)
        trainer = PunktTrainer()
        trainer.INCLUDE_ALL_COLLOCS = True
        trainer.train(_training_text(), finalize=True)
        tmp = Path(save_punkt_params(trainer.get_params()))
        os.makedirs(lang_dir, exist_ok=True)
        for f in PUNKT_FILES:
            shutil.move(str(tmp / f), str(lang_dir / f))
        shutil.rmtree(tmp, ignore_errors=True)
    return lang_dir


@functools.lru_cache(maxsize=1)
def ifeval_utils():
    """lm-eval's IFEval scoring module, imported with the local Punkt model in place."""
    ensure_punkt()
    from lm_eval.tasks.ifeval import instructions_util, utils
    from nltk.tokenize import PunktTokenizer

    tokenizer = PunktTokenizer("english")
    # lm-eval loads the legacy pickle ("punkt/english.pickle"); serve the punkt_tab model instead
    instructions_util._get_sentence_tokenizer = lambda: tokenizer
    return utils
