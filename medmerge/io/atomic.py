"""Atomic output directories: write into a temporary sibling, rename at the end.

A crash, a kill or an exception leaves no directory at the final path, so nothing
half-made ever looks like a checkpoint. The temporary directory is a hidden sibling
(same filesystem, so the rename is atomic) and is removed on any exception.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from medmerge.errors import OutputError

TMP_PREFIX = ".medmerge-tmp-"


@contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` when the block succeeds."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise OutputError(f"output directory {final} already exists (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + final.name + "-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise OutputError(
                f"no space left on device while writing {final}; the temporary directory {tmp} was removed"
            ) from exc
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_tmp(parent: str | os.PathLike) -> list[Path]:
    """Remove leftovers of killed runs (``.medmerge-tmp-*``) under ``parent``; return what was removed."""
    removed = []
    parent = Path(parent)
    if parent.is_dir():
        for p in parent.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
