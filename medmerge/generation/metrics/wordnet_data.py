"""WordNet 3.0 for NLTK, offline: built once from Debian's ``wordnet-base`` files (plus the two files
NLTK needs and Debian lacks, ``lexnames`` and ``index.sense``) under medmerge's cache. METEOR's synonyms."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from medmerge.errors import MedmergeError
from medmerge.io.hashing import cache_dir

#: Where Debian's ``wordnet-base`` puts the WordNet 3.0 database (override: MEDMERGE_WORDNET_DIR).
DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")

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
        if ss_type == "s" and head is not None:   # a satellite adjective names its head synset
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

