"""Preflight: what is wrong with one value, or None: registered-model names, tracking and storage URLs,
checkpoints, parents' compatibility, output folders, devices."""

from __future__ import annotations

import os
from pathlib import Path

from medmerge.errors import MedmergeError
from medmerge.preflight.problems import HUB_ID, MEDMERGE_FILES, one_line

# ---------------------------------------------------------------------------------------------
# values: names, URLs, paths
# ---------------------------------------------------------------------------------------------

def model_name_problem(name: object, what: str = "registered model name") -> str | None:
    """Why ``name`` cannot name a registered model (MLflow's own rule, and no '@', which would read as an
    alias in ``models:/NAME@alias``), or None."""
    if not isinstance(name, str) or not name.strip():
        return f"{what} is empty"
    from medmerge.tracking.names import model_name_problem as mlflow_rule

    why = mlflow_rule(name)
    if why:
        return f"{what} {name!r}: {why}"
    if "@" in name:
        return f"{what} {name!r}: '@' would read as an alias in models:/NAME@alias"
    return None


def tracking_uri_problem(uri: object) -> str | None:
    """Why MLflow would not take ``uri`` as a tracking URI (scheme, host, path), or None."""
    from urllib.parse import urlparse

    if not isinstance(uri, str) or not uri.strip():
        return "tracking URI is empty"
    from medmerge.tracking.names import tracking_scheme_problem

    why = tracking_scheme_problem(uri)
    if why:
        return why
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https") and not parsed.hostname:
        return f"tracking URI {uri!r} has no host"
    if scheme in ("http", "https"):
        try:
            _ = parsed.port   # raises ValueError for a port out of range
        except ValueError:
            return f"tracking URI {uri!r} has a port that is not a number in 0-65535"
    if scheme.startswith(("sqlite", "postgresql", "mysql", "mssql")):
        return sqlalchemy_url_problem(uri, "tracking URI")
    return None


def sqlalchemy_url_problem(url: object, what: str = "study_storage") -> str | None:
    """Why ``url`` is no SQLAlchemy database URL of a dialect SQLAlchemy knows (``sqlite:///f.db``,
    ``postgresql://user@host/db``, ``mysql+pymysql://...``), or None."""
    if not isinstance(url, str) or not url.strip():
        return f"{what} is empty"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError) as exc:
        return f"{what} {url!r} is not a SQLAlchemy URL (dialect://user:password@host/database): {one_line(exc)}"
    try:
        u.get_dialect()
    except NoSuchModuleError:
        return f"{what} {url!r}: unknown database dialect {u.drivername!r} (sqlite, postgresql, mysql, mssql, oracle)"
    except Exception as exc:   # a dialect whose module fails to load
        return f"{what} {url!r}: {u.drivername!r} cannot be used here ({type(exc).__name__}: {one_line(exc)})"
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:" and not db.startswith("file:"):
            p = Path(db).expanduser()
            if p.is_dir():
                return f"{what} {url!r}: {db} is a directory, not a database file"
            if not p.parent.is_dir():
                return f"{what} {url!r}: the directory {p.parent} does not exist (sqlite creates the file, not " \
                       f"its directory)"
    elif not u.host and u.get_backend_name() != "sqlite":
        return f"{what} {url!r} names no host"
    return None


def checkpoint_problem(ref: object, what: str, local: bool = True) -> str | None:
    """Why ``ref`` (a parent, an initialisation) cannot be read: a local path that does not exist or holds
    no checkpoint; a name that is no local path must look like a Hub id ``org/name``."""
    if not isinstance(ref, str) or not ref.strip():
        return f"{what} is empty"
    p = Path(ref).expanduser()
    if not local:
        return None
    if not os.path.lexists(p):
        from medmerge.io.checkpoint import split_revision

        name, revision = split_revision(ref)   # org/name@revision
        if HUB_ID.match(name) and not ref.startswith((".", "~")):
            return _hub_cache_problem(name, revision, what)
        return f"{what} {ref} does not exist (a local checkpoint directory, or a Hub id org/name)"
    if not p.is_dir():
        return f"{what} {ref} is not a directory (a checkpoint is a directory with config.json and weights)"
    if not (p / "config.json").is_file():
        return f"{what} {ref} holds no config.json: not a checkpoint directory"
    from medmerge.io.checkpoint import Checkpoint

    try:
        Checkpoint(p)
    except MedmergeError as exc:
        return f"{what} {ref}: {one_line(exc)}"
    except OSError as exc:
        return f"{what} {ref} cannot be read: {exc.strerror or exc}"
    return None


def compatibility_problem(refs: list[str]) -> str | None:
    """Why the local checkpoints ``refs`` cannot be merged (architecture, vocabulary, tokenizer, tensor names and
    shapes: :func:`medmerge.merge.compat.check_compatible` on the headers, no tensor read), or None. Hub ids are
    left to the check_parents step."""
    from medmerge.io.checkpoint import Checkpoint
    from medmerge.merge.compat import check_compatible

    local = [r for r in dict.fromkeys(refs) if Path(r).expanduser().is_dir()]
    if len(local) != len(set(refs)):
        return None
    try:
        check_compatible([Checkpoint(Path(r).expanduser()) for r in local])
    except MedmergeError as exc:
        return one_line(exc)
    except OSError as exc:
        return f"a parent cannot be read: {exc.strerror or exc}"
    return None


def _hub_cache_problem(ref: str, revision: str | None, what: str) -> str | None:
    """Offline (``HF_HUB_OFFLINE``), a Hub id must already be in the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        got = try_to_load_from_cache(ref, "config.json", revision=revision)
    except Exception:   # an id the Hub would refuse
        return f"{what} {ref} is neither a local path nor a valid Hub id"
    if not isinstance(got, str):
        return f"{what} {ref} does not exist locally, and HF_HUB_OFFLINE is set with no Hub copy of it cached"
    return None


def output_dir_problem(path: object, protect: list[str], local: bool = True, label: str = "output_dir") -> str | None:
    """Why the pipeline may not write into ``path``: see the module docstring (``protect``: the parents)."""
    if not isinstance(path, str) or not path.strip():
        return f"{label} is empty"
    if not local:
        return f"{label} {path!r} is the working directory" if os.path.normpath(path) == "." else None
    from medmerge.errors import OutputError

    try:
        _check_output_dir(path, protect, label)
    except OutputError as exc:
        return one_line(exc)
    return None


def _check_output_dir(path: str, protect: list[str], label: str) -> None:
    from medmerge.errors import OutputError
    from medmerge.io.atomic import check_output_dir, refuse_aliased_output

    p = Path(path).expanduser()
    # the CLI's rule for a folder of outputs: creatable, writable, not the current directory or an ancestor,
    # not a file or below one, not a parent or inside one
    check_output_dir(p, protect=protect, protect_what="parent", container=True, label=label)
    # nor holding a parent (the pipeline writes candidates into it by name)
    refuse_aliased_output(p, protect, "parent", label=label)
    if p.is_dir():
        foreign = _foreign_entry(p)
        if foreign is not None:
            raise OutputError(f"{label} {path} holds {foreign}, which medmerge did not write; choose a new "
                              f"directory (or empty this one)")


def _foreign_entry(d: Path, depth: int = 3) -> str | None:
    """The first top-level entry of ``d`` that medmerge did not write (None when all are medmerge's): a
    checkpoint or run folder holding medmerge's record, its temporary directories, the Optuna study."""
    from medmerge.io.atomic import TMP_PREFIX

    for entry in sorted(d.iterdir()):
        name = entry.name
        if name.startswith(TMP_PREFIX) or name in MEDMERGE_FILES or name.startswith("optuna.db"):
            continue
        if entry.is_dir() and not entry.is_symlink() and _medmerge_made(entry, depth):
            continue
        return name
    return None


def _medmerge_made(d: Path, depth: int) -> bool:
    """``d`` is empty, or holds medmerge's record itself or (within ``depth`` levels) in every subfolder."""
    try:
        entries = list(d.iterdir())
    except OSError:
        return False
    if not entries or any((d / f).is_file() for f in MEDMERGE_FILES):
        return True
    if depth <= 1:
        return False
    from medmerge.io.atomic import TMP_PREFIX

    return all(e.name.startswith(TMP_PREFIX) or (e.is_dir() and not e.is_symlink() and _medmerge_made(e, depth - 1))
               for e in entries)

def device_problem(device: str | None) -> str | None:
    """Why this machine cannot run on ``device`` (``cuda`` without a CUDA GPU, ``cuda:3`` with fewer), or None."""
    if not device or not device.startswith(("cuda", "mps")):
        return None
    import torch

    if device.startswith("mps"):
        return None if torch.backends.mps.is_available() else f"device {device}: this machine has no MPS device"
    if not torch.cuda.is_available():
        return f"device {device}: this machine has no CUDA GPU (use cpu, or leave device unset)"
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        return f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
    return None
