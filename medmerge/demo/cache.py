"""A build cache for the demo models, shared by ``make demo`` (``medmerge demo-models``) and the test suite.

A build is stored once per key under ``$MEDMERGE_DEMO_MODELS_CACHE`` (default
``~/.cache/medmerge/demo-models``): ``<root>/<key>/{base,clinical,instruct}`` and a ``manifest.json`` of
every file's SHA-256. The key is the SHA-256 of what decides the weights:

* the builder's code (every ``medmerge/demo/*.py``) and the corpus it trains on
  (``medmerge/resources/demo/corpus``);
* the seed;
* the torch, transformers and tokenizers versions (the build is bit-reproducible on one torch build).

Change any of them and the next call builds afresh under a new key. A cached build is checked against
its manifest before it is used (a few MB to hash); one that no longer matches (a file edited in place)
is rebuilt. Concurrent callers build once: the first holds a lock, the others wait for it. Callers read
the cached models and never write into them (:func:`copy_demo_models` copies them out for a user).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib.resources import files
from pathlib import Path

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """``$MEDMERGE_DEMO_MODELS_CACHE``, or ``~/.cache/medmerge/demo-models``."""
    return Path(os.environ.get("MEDMERGE_DEMO_MODELS_CACHE") or Path.home() / ".cache" / "medmerge" / "demo-models")


def build_key(seed: int = 0) -> str:
    """The cache key of a build with ``seed`` by this code on these library versions (24 hex digits)."""
    import tokenizers
    import torch
    import transformers

    h = hashlib.sha256()
    code = Path(__file__).resolve().parent
    corpus = Path(str(files("medmerge") / "resources" / "demo" / "corpus"))
    for label, folder, pattern in (("code", code, "*.py"), ("corpus", corpus, "*")):
        for p in sorted(folder.glob(pattern)):
            if p.is_file():
                h.update(f"{label}/{p.name}\0".encode())
                h.update(p.read_bytes())
    h.update(json.dumps({"seed": seed, "torch": torch.__version__, "transformers": transformers.__version__,
                         "tokenizers": tokenizers.__version__}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _digests(root: Path) -> dict[str, str]:
    from medmerge.demo import MODEL_NAMES

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for name in MODEL_NAMES for p in sorted((root / name).rglob("*")) if p.is_file()}


def _intact(entry: Path) -> bool:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        return bool(manifest["files"]) and _digests(entry) == manifest["files"]
    except (OSError, ValueError, KeyError):
        return False


def cached_demo_models(seed: int = 0, *, quiet: bool = False, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The demo models ``{"base", "clinical", "instruct"} -> Path`` of this code and ``seed``, built into the
    cache the first time (:func:`medmerge.demo.build_demo_models`), read from it afterwards. Read only."""
    from medmerge.demo import MODEL_NAMES, build_demo_models
    from medmerge.io.atomic import atomic_dir, exclusive_lock

    root = Path(root) if root is not None else cache_root()
    key = build_key(seed)
    entry = root / key
    if not _intact(entry):
        with exclusive_lock(root / f".{key}.lock", wait=True):
            if not _intact(entry):   # another process may have built it while this one waited
                with atomic_dir(entry, overwrite=True) as tmp:
                    build_demo_models(tmp, seed=seed, quiet=quiet)
                    manifest = {"key": key, "seed": seed, "files": _digests(tmp)}
                    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return {name: entry / name for name in MODEL_NAMES}


def copy_demo_models(out_dir: str | os.PathLike, seed: int = 0, *, quiet: bool = False) -> dict[str, Path]:
    """``out_dir/{base,clinical,instruct}`` as :func:`medmerge.demo.build_demo_models` writes them, copied from
    the build cache (built there first when missing). Existing model directories are replaced, each atomically."""
    from medmerge.io.atomic import atomic_dir

    out_dir = Path(out_dir)
    paths = {}
    for name, src in cached_demo_models(seed, quiet=quiet).items():
        with atomic_dir(out_dir / name, overwrite=True) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        paths[name] = out_dir / name
    return paths
