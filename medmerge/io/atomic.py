"""Output paths: checked before any work, written atomically, never replacing what medmerge did not make.

Every path a command writes goes through one of two checks, which write nothing and can run before any
tensor is read (the pipelines' preflight calls them too):

* :func:`check_output_dir` for a directory (a checkpoint, or with ``container=True`` a folder of
  checkpoints such as a sweep's OUT_DIR), and
* :func:`check_output_file` for a single file (a report, a crontab line).

They refuse, each with one line saying why: a path below a regular file, a name longer than the file
system allows, a directory we cannot create or write in (read-only, permission), an output that is,
contains or lies inside an input, the current directory or an ancestor of it, and an existing output
that medmerge did not write. ``--overwrite`` replaces only a directory medmerge wrote: one holding
medmerge's marker (:data:`MARKER`, the list of files it wrote) and no other file, or an empty one.

Directories are written by :func:`atomic_dirs` (:func:`atomic_dir` for one): into a temporary sibling
(same file system, so the rename is atomic), renamed into place at the end with ``renameat2(...,
RENAME_NOREPLACE)``, so an output that appeared meanwhile is never replaced without ``--overwrite`` (a
lock serialises medmerge's own writers where ``renameat2`` is missing). With ``--overwrite`` the old
directory is renamed aside, the new one renamed in, and only then is the old one deleted. A failure or
an interrupt removes the temporary directories, every output already renamed into place by the same
call (their old versions are put back), and every parent directory the call created: nothing else.

Temporary names carry the host and process id (``.medmerge-tmp-<name>.<host>.<pid>.<random>``): a
``kill -9`` leaves one behind, and the next write of the same output removes it once that process is
gone (a live writer's directory is never touched).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from medmerge.errors import OutputError

TMP_PREFIX = ".medmerge-tmp-"
MARKER = ".medmerge-output.json"   # in every directory medmerge writes: the files it wrote
# records medmerge adds to an output it wrote, after the marker was written (finetune's medmerge_sft.json: the
# identity of the SFT that made the checkpoint); never a user's file
RECORDS = frozenset({"medmerge_sft.json"})
# Files of a checkpoint merged before markers existed (then medmerge.json marked a merge).
_LEGACY_CHECKPOINT_FILES = {
    "config.json", "generation_config.json", "medmerge.json", "mergekit_config.yml", "README.md",
    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json",
}

# errno -> the words a user reads after the path (shared by the CLI's OSError handler)
ERRNO_WORDS = {
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "is a directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error",
    errno.EXDEV: "crosses file systems",
    errno.EBUSY: "device or resource busy",
    errno.ETXTBSY: "text file busy",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names and the reason in words."""
    words = (ERRNO_WORDS.get(exc.errno) if exc.errno is not None else None) or exc.strerror or str(exc) or type(exc).__name__
    where = _shown_path(exc.filename)
    if where is not None and exc.filename2 is not None:
        where = f"{where} -> {_shown_path(exc.filename2)}"
    return f"{where}: {words}" if where is not None else words


def _shown_path(path) -> str | None:
    """A path as the user gave it: a temporary name of ours (``<dir>/.medmerge-tmp-<name>.<host>.<pid>...``) is
    shown as ``<dir>/<name>``, the output it stands for, never as the name the user never typed."""
    if path is None:
        return None
    path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    head, base = os.path.split(path)
    if base.startswith(TMP_PREFIX):
        name, sep, _ = base[len(TMP_PREFIX):].rpartition(f".{socket.gethostname()}.")
        if sep and name:
            return os.path.join(head, name)
    return path


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
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if getattr(cur, "errno", None) == errno.ENOSPC or "No space left on device" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


# ------------------------------------------------------------------------------------------------
# checks (write nothing)
# ------------------------------------------------------------------------------------------------
def refuse_aliased_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "input model",
                          *, may_contain: bool = False, label: str = "output directory",
                          shown: object = None, remedy: str = "choose another destination") -> None:
    """Raise :class:`OutputError` when the output ``out`` is, contains or lies inside one of ``inputs``
    (local paths; Hub ids that are not paths here are ignored). Writing there, with ``--overwrite``
    above all, would replace or bury the user's own model, so no flag allows it. ``may_contain``: ``out``
    is a parent folder whose own subfolders are checked separately (a sweep's output directory), so
    holding an input elsewhere inside it is fine."""
    dest = Path(os.path.realpath(_normal(out)))
    named = out if shown is None else shown
    for ref in inputs:
        src_path = Path(str(ref)).expanduser()
        if not src_path.exists():
            continue
        src = Path(os.path.realpath(src_path))
        if dest == src:
            raise OutputError(f"{label} {named} is the {what} {ref}; {remedy}")
        if src.is_relative_to(dest) and not may_contain:
            raise OutputError(f"{label} {named} contains the {what} {ref}; {remedy}")
        if dest.is_relative_to(src) and src.is_dir():
            raise OutputError(f"{label} {named} lies inside the {what} {ref}; {remedy}")


def _normal(path: str | os.PathLike) -> Path:
    """``path`` absolute, with ``~`` expanded and ``.``/``..`` resolved lexically (``out/..`` is the cwd)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _name_max(d: Path) -> int:
    try:
        return os.pathconf(d, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _check_path_shape(p: Path, label: str, shown: object) -> None:
    """The path can be created: no name too long, no regular file where a directory must be, and the
    nearest existing directory is writable (not read-only, not forbidden)."""
    if not str(shown).strip():
        raise OutputError(f"{label} is empty")
    absolute = Path(os.path.abspath(p))
    if len(os.fsencode(str(absolute))) >= 4096:
        raise OutputError(f"{label} {shown}: path too long ({len(os.fsencode(str(absolute)))} bytes)")
    existing = absolute
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    limit = _name_max(existing if existing.is_dir() else existing.parent)
    for part in absolute.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"{label} {shown}: file name too long ({len(os.fsencode(part))} bytes; "
                              f"the file system allows {limit}): {part[:40]}...")
    if existing != absolute:   # to be created below ``existing``
        if not existing.is_dir():
            what = "a file" if existing.exists() else "a broken symbolic link"
            raise OutputError(f"{label} {shown}: {existing} is {what}, not a directory")
        _check_writable(existing, label, shown)


def _check_writable(d: Path, label: str, shown: object) -> None:
    try:
        read_only = bool(os.statvfs(d).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        raise OutputError(f"{label} {shown}: cannot write in {d} (read-only file system)")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{label} {shown}: cannot write in {d} (permission denied)")


def _refuse_cwd(p: Path, label: str, shown: object) -> None:
    real = Path(os.path.realpath(p))
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd:
        raise OutputError(f"{label} {shown} is the current directory; choose a new directory")
    if cwd.is_relative_to(real):
        raise OutputError(f"{label} {shown} contains the current directory ({cwd}); choose a new directory")


def _iter_files(d: Path) -> Iterator[str]:
    """Every non-directory entry under ``d`` (symbolic links count as files), relative, in POSIX form."""
    for root, dirs, files in os.walk(d):
        rel = Path(root).relative_to(d)
        for f in files:
            yield (rel / f).as_posix()
        for x in dirs:
            if os.path.islink(os.path.join(root, x)):
                yield (rel / x).as_posix()


def _files_under(d: Path) -> list[str]:
    return sorted(_iter_files(d))


def not_medmerge_reason(d: str | os.PathLike) -> str | None:
    """Why directory ``d`` is not an output medmerge wrote and may replace, or None when it is: it holds
    medmerge's marker and only the files the marker lists (or, written before markers, ``medmerge.json``
    and only a checkpoint's files), or nothing at all."""
    d = Path(d)
    marker = d / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            listed = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return f"its {MARKER} is unreadable"
        extra = next((f for f in _iter_files(d) if f not in listed and f != MARKER and f not in RECORDS), None)
        return f"it holds {extra}, which medmerge did not write" if extra else None
    if (d / "medmerge.json").is_file():
        extra = next((f for f in _iter_files(d) if f not in _LEGACY_CHECKPOINT_FILES and not _is_weight_file(f)),
                     None)
        return f"it holds {extra}, which is not part of a checkpoint" if extra else None
    with os.scandir(d) as entries:   # stop at the first entry: a user's home is not walked
        if next(entries, None) is None:
            return None
    return f"it has no {MARKER}"


def _is_weight_file(name: str) -> bool:
    return "/" not in name and name.endswith(".safetensors")


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, protect: Iterable[str | os.PathLike] = (),
                     protect_what: str = "input model", container: bool = False,
                     label: str = "output directory") -> None:
    """Raise :class:`OutputError` (one line saying why) unless ``path`` may be written as an output
    directory; writes nothing.

    A new directory needs a creatable path (no file in the way, no over-long name, a writable existing
    parent). An existing one is refused unless ``overwrite`` is set and medmerge wrote it (see
    :func:`not_medmerge_reason`); never, whatever ``overwrite`` says: the current directory or an
    ancestor of it, a regular file, a symbolic link, one of ``protect`` (the inputs), a directory inside
    one, or one holding one. ``container``: a folder whose entries are outputs checked one by one (a
    sweep's OUT_DIR): it may exist, hold other things and hold inputs; it is never replaced itself.
    """
    shown = path
    if not str(shown).strip():
        raise OutputError(f"{label} is empty")
    p = _normal(path)
    _check_path_shape(p, label, shown)
    refuse_aliased_output(p, protect, protect_what, may_contain=container, label=label, shown=shown)
    if not os.path.lexists(p):
        return
    if p.is_symlink() and not container:
        if overwrite:
            raise OutputError(f"{label} {shown} is a symbolic link (to {os.readlink(p)}); --overwrite replaces "
                              f"only a directory medmerge wrote")
        raise OutputError(f"{label} {shown} already exists (a symbolic link); choose a new directory")
    if not p.is_dir():
        raise OutputError(f"{label} {shown} is a file, not a directory")
    _refuse_cwd(p, label, shown)
    if container:
        _check_writable(p, label, shown)
        return
    reason = not_medmerge_reason(p)
    if not overwrite:
        if reason is None:
            raise OutputError(f"{label} {shown} already exists (use --overwrite to replace it)")
        raise OutputError(f"{label} {shown} already exists and medmerge did not write it ({reason}); "
                          f"choose a new directory")
    if reason is not None:
        raise OutputError(f"{label} {shown} was not written by medmerge ({reason}); --overwrite replaces "
                          f"only a directory medmerge wrote")
    _check_writable(p.parent, label, shown)


def check_output_file(path: str | os.PathLike, *, protect: Iterable[str | os.PathLike] = (),
                      protect_what: str = "input", replaceable: Callable[[Path], bool] | None = None,
                      overwrite: bool = False, label: str = "output file") -> None:
    """Raise :class:`OutputError` unless ``path`` may be written as an output file; writes nothing.

    Refused: a directory, a path below a regular file or with an over-long name, an unwritable parent,
    one of ``protect`` or a path inside one, and an existing file unless ``overwrite`` is set or
    ``replaceable(path)`` says medmerge wrote it (a report of the same kind)."""
    shown = path
    if not str(shown).strip():
        raise OutputError(f"{label} is empty")
    p = _normal(path)
    _check_path_shape(p, label, shown)
    if p.is_dir():
        raise OutputError(f"{label} {shown} is a directory, not a file")
    # a file contains nothing (a directory was refused above), so only 'is' and 'lies inside' can apply
    refuse_aliased_output(p, protect, protect_what, label=label, shown=shown, remedy="choose another file name")
    if os.path.lexists(p):
        if p.is_symlink():
            raise OutputError(f"{label} {shown} is a symbolic link; choose another file name")
        if not overwrite and (replaceable is None or not _safe_predicate(replaceable, p)):
            raise OutputError(f"{label} {shown} already exists and medmerge did not write it; choose another "
                              f"file name")
        _check_writable(p.parent, label, shown)


def _safe_predicate(pred: Callable[[Path], bool], p: Path) -> bool:
    try:
        return bool(pred(p))
    except (OSError, ValueError):
        return False


def json_file_with(*keys: str) -> Callable[[Path], bool]:
    """A ``replaceable`` predicate: the file is a JSON object holding every one of ``keys``."""
    def pred(p: Path) -> bool:
        if p.stat().st_size > 64 * 2**20:
            return False
        data = json.loads(p.read_text(encoding="utf-8"))
        return isinstance(data, dict) and all(k in data for k in keys)
    return pred


def text_file_starting(*prefixes: str) -> Callable[[Path], bool]:
    """A ``replaceable`` predicate: the file's text starts with one of ``prefixes``."""
    def pred(p: Path) -> bool:
        with open(p, encoding="utf-8") as f:
            head = f.read(4096)
        return head.startswith(prefixes)
    return pred


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
AT_FDCWD = -100
RENAME_NOREPLACE = 1
_RENAMEAT2: list = []


def _renameat2():
    if not _RENAMEAT2:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):   # not Linux, or a libc older than glibc 2.28
            fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (even an empty directory), decided
    atomically by the kernel (``renameat2(RENAME_NOREPLACE)``). Where that call is missing or the file
    system does not support it, an existence check and ``rename``: callers hold :func:`_commit_lock`."""
    fn = _renameat2()
    if fn is not None:
        if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), os.fspath(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(dst))
    os.rename(src, dst)


@contextmanager
def _commit_lock(final: Path) -> Iterator[None]:
    """Serialise medmerge's commits to one output path (on this host), from the last check to the rename."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(final.parent) + "/" + final.name)).hexdigest()[:32]
    lock = exclusive_lock(Path(tempfile.gettempdir()) / "medmerge-locks" / f"{key}.lock", wait=True)
    try:
        lock.__enter__()
    except OSError:   # no writable temp dir (another user's lock folder): renameat2 still decides alone
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _make_parents(d: Path) -> list[Path]:
    """``mkdir -p d``; returns the directories this call created, outermost first."""
    missing = []
    a = Path(os.path.abspath(d))
    while not os.path.lexists(a) and a != a.parent:
        missing.append(a)
        a = a.parent
    created: list[Path] = []
    try:
        for m in reversed(missing):
            try:
                os.mkdir(m)
                created.append(m)
            except FileExistsError:
                if not m.is_dir():
                    raise
    except BaseException:
        _remove_created(created)
        raise
    return created


def _remove_created(created: Sequence[Path]) -> None:
    """Remove directories we created (innermost first) if they are empty: never anyone else's files."""
    for m in reversed(created):
        try:
            os.rmdir(m)
        except OSError:
            pass


def _write_marker(d: Path) -> None:
    from medmerge import __version__

    files = [f for f in _files_under(d) if f != MARKER]
    (d / MARKER).write_text(json.dumps({"written_by": "medmerge", "medmerge_version": __version__,
                                        "files": files}, indent=1) + "\n", encoding="utf-8")


@contextmanager
def atomic_dirs(finals: Sequence[str | os.PathLike], *, overwrite: bool = False,
                protect: Iterable[str | os.PathLike] = (), protect_what: str = "input model",
                label: str = "output directory") -> Iterator[list[Path]]:
    """Yield one fresh temporary directory per path of ``finals``; when the block succeeds they become
    ``finals`` together, each holding medmerge's marker. Each final path is checked first
    (:func:`check_output_dir`; ``protect`` are the inputs) and again before it is replaced. On any
    failure or interrupt, in the block or while renaming, nothing of this call remains: temporary
    directories, outputs already renamed into place (old versions restored) and parent directories
    it created are removed."""
    protect = list(protect)
    for f in finals:
        check_output_dir(f, overwrite=overwrite, protect=protect, protect_what=protect_what, label=label)
    paths = [_normal(f) for f in finals]
    if len(set(paths)) != len(paths):
        raise ValueError("the same output directory is listed twice")
    created: list[Path] = []
    tmps: list[Path] = []
    try:
        for f in paths:
            created += _make_parents(f.parent)
            remove_stale_tmp(f.parent, f.name)
            tmps.append(Path(tempfile.mkdtemp(prefix=f"{_owner_prefix(f.name)}{os.getpid()}.", dir=f.parent)))
        yield list(tmps)
        _commit(paths, tmps, overwrite=overwrite, protect=protect, protect_what=protect_what, label=label)
    except BaseException as exc:
        for t in tmps:
            shutil.rmtree(t, ignore_errors=True)
        _remove_created(created)
        if isinstance(exc, Exception) and not isinstance(exc, OutputError) and _disk_full(exc):
            where = ", ".join(str(t) for t in tmps)
            raise OutputError(
                f"no space left on device while writing {', '.join(map(str, paths))}; the temporary "
                f"director{'y' if len(tmps) == 1 else 'ies'} {where} {'was' if len(tmps) == 1 else 'were'} removed"
            ) from exc
        raise


def _commit(finals: list[Path], tmps: list[Path], *, overwrite: bool, protect: list, protect_what: str,
            label: str) -> None:
    done: list[tuple[Path, Path, Path | None]] = []
    try:
        for final, tmp in zip(finals, tmps):
            _write_marker(tmp)
            with _commit_lock(final):
                aside = None
                if os.path.lexists(final):
                    if not overwrite:
                        raise OutputError(f"{label} {final} appeared while medmerge was writing it and was left "
                                          f"as it is; nothing was written (use --overwrite to replace it)")
                    check_output_dir(final, overwrite=True, protect=protect, protect_what=protect_what, label=label)
                    aside = final.parent / f"{_owner_prefix(final.name)}{os.getpid()}.old-{uuid.uuid4().hex[:8]}"
                    os.rename(final, aside)
                try:
                    rename_noreplace(tmp, final)
                except FileExistsError:
                    if aside is not None:
                        os.rename(aside, final)
                    raise OutputError(f"{label} {final} appeared while medmerge was writing it and was left as "
                                      f"it is; nothing was written") from None
                except BaseException:
                    if aside is not None:
                        os.rename(aside, final)
                    raise
                done.append((final, tmp, aside))
    except BaseException:
        for final, tmp, aside in reversed(done):   # take back what this call put in place
            try:
                os.rename(final, tmp)
                if aside is not None:
                    os.rename(aside, final)
            except OSError:
                pass
        raise
    for _, _, aside in done:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False,
               protect: Iterable[str | os.PathLike] = (), *, protect_what: str = "input model",
               label: str = "output directory") -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` when the block succeeds (see
    :func:`atomic_dirs`). ``final`` may not be, contain or lie inside any path of ``protect`` (the
    inputs), and ``overwrite`` replaces only a directory medmerge wrote."""
    with atomic_dirs([final], overwrite=overwrite, protect=protect, protect_what=protect_what,
                     label=label) as (tmp,):
        yield tmp


@contextmanager
def output_container(path: str | os.PathLike, *, protect: Iterable[str | os.PathLike] = (),
                     protect_what: str = "input model", label: str = "output directory") -> Iterator[Path]:
    """A folder that collects outputs (``evaluate-sweep --out``): checked, created with its missing parents,
    and, if the block fails or is interrupted, removed again with everything in it when this call
    created it (an existing folder keeps what it held)."""
    check_output_dir(path, protect=protect, protect_what=protect_what, container=True, label=label)
    p = _normal(path)
    created = _make_parents(p)
    try:
        yield p
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
        raise


def remove_stale_tmp(parent: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary directories under ``parent`` (of output ``name``, or all) that processes
    of this host left behind when killed; a live process's are kept. Returns what was removed."""
    removed: list[Path] = []
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
    path = Path(path)
    created = _make_parents(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_created(created)
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
                    time.sleep(0.05 if on_wait is None else 0.5)
        try:
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
