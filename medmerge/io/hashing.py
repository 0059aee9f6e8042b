"""SHA-256 of weight files, cached by (path, size, mtime, inode).

Parent hashes identify a merge's inputs in model cards, registry tags and evaluation
cache keys. Hashing a multi-GB checkpoint costs seconds, so results are cached in
``$MEDMERGE_CACHE_DIR/sha256.json`` (default ``~/.cache/medmerge``); the cache entry is
invalidated whenever the file's size, mtime or inode changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from medmerge.io.atomic import write_text_atomic

_CHUNK = 8 * 1024 * 1024


def cache_dir() -> Path:
    return Path(os.environ.get("MEDMERGE_CACHE_DIR", Path.home() / ".cache" / "medmerge"))


def _cache_file() -> Path:
    return cache_dir() / "sha256.json"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _load_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict) -> None:
    f = _cache_file()
    try:
        write_text_atomic(f, json.dumps(cache, indent=0, sort_keys=True))
    except OSError:
        pass  # the cache is an optimisation; never fail a merge over it


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="medmerge-sha256")
_inflight: dict[tuple[str, str], Future] = {}
_lock = threading.Lock()


def _future(p: Path) -> Future:
    """One hashing job per (file, stat) in this process, shared by prefetch and later callers."""
    key = (str(p), _stat_key(p))
    with _lock:
        fut = _inflight.get(key)
        if fut is None:
            fut = _inflight[key] = _pool.submit(_sha256, p)
    return fut


def prefetch(paths: list[Path]) -> None:
    """Start hashing ``paths`` in the background (e.g. while heavy imports run on the other core)."""
    cache = _load_cache()
    for p in paths:
        p = Path(p).resolve()
        entry = cache.get(str(p))
        if not (entry and entry.get("stat") == _stat_key(p)):
            _future(p)


def sha256_files(paths: list[Path], use_cache: bool = True) -> dict[str, str]:
    """Return ``{str(resolved path): sha256 hex}``, hashing files in parallel threads."""
    paths = [Path(p).resolve() for p in paths]
    cache = _load_cache() if use_cache else {}
    out: dict[str, str] = {}
    todo = {}
    for p in paths:
        entry = cache.get(str(p))
        if entry and entry.get("stat") == _stat_key(p):
            out[str(p)] = entry["sha256"]
        else:
            todo[p] = _future(p)
    for p, fut in todo.items():
        out[str(p)] = fut.result()
        cache[str(p)] = {"stat": _stat_key(p), "sha256": out[str(p)]}
    if todo and use_cache:
        _save_cache(cache)
    return out
