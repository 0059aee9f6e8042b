"""Atomic output directories: write into a temporary sibling, rename at the end.

A crash, a kill or an exception leaves no directory at the final path, so nothing
half-made ever looks like a checkpoint. The temporary directory is a hidden sibling
(same filesystem, so the rename is atomic) and is removed on any exception. Its name
carries the host and process id (``.medmerge-tmp-<name>.<host>.<pid>.<random>``): a
``kill -9`` leaves it behind, and the next write of the same output removes it once that
process is gone (a live writer's directory is never touched).
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from medmerge.errors import OutputError

TMP_PREFIX = ".medmerge-tmp-"


def _owner_prefix(name: str) -> str:
    return f"{TMP_PREFIX}{name}.{socket.gethostname()}."


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a process we may not signal counts as alive; a zombie,
    dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:   # "pid (comm) S ...": the state follows the last ')'
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC, raised as an OSError or wrapped (safetensors: "No space left on device (os error 28)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def refuse_aliased_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "input model",
                          *, may_contain: bool = False) -> None:
    """Raise :class:`OutputError` when the output directory ``out`` is, contains or lies inside one of
    ``inputs`` (local paths; Hub ids that are not directories here are ignored). Writing there, with
    ``--overwrite`` above all, would replace or bury the user's own model, so no flag allows it.
    ``may_contain``: ``out`` is a parent folder whose own subfolders are checked separately (a sweep's
    output directory), so holding an input elsewhere inside it is fine."""
    dest = Path(os.path.realpath(Path(out).expanduser()))
    for ref in inputs:
        src_path = Path(str(ref)).expanduser()
        if not src_path.exists():
            continue
        src = Path(os.path.realpath(src_path))
        if dest == src:
            raise OutputError(f"output directory {out} is the {what} {ref}; choose another destination")
        if src.is_relative_to(dest) and not may_contain:
            raise OutputError(f"output directory {out} contains the {what} {ref}; choose another destination")
        if dest.is_relative_to(src) and src.is_dir():
            raise OutputError(f"output directory {out} lies inside the {what} {ref}; choose another destination")


@contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False,
               protect: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` when the block succeeds. ``final`` may not
    be, contain or lie inside any path of ``protect`` (the inputs), whatever ``overwrite`` says."""
    final = Path(final)
    refuse_aliased_output(final, protect)
    if final.exists() and not overwrite:
        raise OutputError(f"output directory {final} already exists (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_owner_prefix(final.name)}{os.getpid()}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, OutputError) and _disk_full(exc):
            raise OutputError(
                f"no space left on device while writing {final}; the temporary directory {tmp} was removed"
            ) from exc
        raise


def remove_stale_tmp(parent: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary directories under ``parent`` (of output ``name``, or all) that processes
    of this host left behind when killed; a live process's are kept. Returns what was removed."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    host = "." + socket.gethostname() + "."
    pattern = glob.escape(_owner_prefix(name)) + "*" if name is not None else glob.escape(TMP_PREFIX) + "*"
    for p in parent.glob(pattern):
        head, sep, rest = p.name.rpartition(host)  # <prefix><name> . <host> . <pid>.<random>
        pid = rest.split(".", 1)[0]
        if not sep or not head.startswith(TMP_PREFIX) or not pid.isdigit() or pid_alive(int(pid)):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary sibling and ``os.replace``: readers see the old file or
    the new one, never half of it; the temporary file is removed on any error."""
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = False, on_wait=None) -> Iterator[object | None]:
    """Hold the file ``path`` exclusively (``flock``; released when the process dies, even by kill -9).
    Yields the open file, or None when another process holds it and ``wait`` is False. With ``wait``,
    ``on_wait(holder_pid)`` is called once before blocking. The holder's pid is written into the file."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield None
                return
            if on_wait is not None:
                f.seek(0)
                on_wait(f.read().strip() or "?")
            while True:   # a plain blocking flock cannot be interrupted by Ctrl-C on every platform
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.5)
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
