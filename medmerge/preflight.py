"""Preflight: a pipeline's whole run configuration checked before any step runs (before ZenML is imported).

``python -m pipelines.merge_search|finetune|retrain`` and ``medmerge schedule`` call :func:`check_run_configs`
first. It reads each run-config YAML and collects every problem that can be known from the configuration
and the file system, each as one line ``<file>: parameters.config.<key>: <what is wrong>``; when there is
any, it raises :class:`PreflightError` (the entry points print one line per problem and exit 2) and nothing
has been run or written. What it checks:

* **keys**: an unknown key (at the top level, under ``parameters``, or anywhere in ``parameters.config``)
  names the key, the file and the nearest valid key; pydantic's errors become one line each, never a dump;
* **types**: a boolean or a string where a number belongs, and ``.nan``/``.inf``, are refused wherever they
  appear (pydantic's lax mode would read ``true`` as 1 and ``"8"`` as 8);
* **domains**: the ranges the configuration models declare (:class:`~medmerge.search.SearchConfig`,
  :class:`~medmerge.finetune.FinetuneConfig` and the settings they hold: evaluation ``limit`` >= 1,
  batch sizes >= 1, ``eps`` >= 0, learning rate > 0 ...), the sweep's (the method registry's, through
  :class:`~medmerge.recipe.SweepSpec`), and the registered model and experiment names;
* **names**: suites, objectives, tasks, methods, presets, and the candidate names ``picks:`` and ``promote:``
  list, which must be candidates of the grid (an Optuna search names its candidates while it runs, so it
  takes keywords only);
* **files**: parents and initialisations exist as checkpoints (a name that is no local path must look like
  a Hub id ``org/name``), data directories and task files exist, and the shot sizes fit the training split;
* **outputs**: ``output_dir`` may be written (:func:`medmerge.io.atomic.check_output_dir`): not the current
  directory or an ancestor, not a file or below one, not holding or inside a parent, writable; an existing
  one holds only what medmerge wrote there;
* **URLs**: ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) has a scheme MLflow takes, and ``study_storage``
  is a SQLAlchemy URL of a known dialect.

Paths are checked on this machine; a run config whose steps run in containers (``settings: docker:``)
gets every check but those of the file system, which the step pods would see differently.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

from medmerge.errors import MedmergeError


class RunConfigError(MedmergeError):
    """A ZenML run-config YAML cannot be read or lacks ``parameters.config``."""


class PreflightError(MedmergeError):
    """One or more problems in run configurations; ``problems`` holds one line each."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# The keys of a ZenML run configuration (PipelineRunConfiguration's fields; tests/test_preflight.py holds this
# list to ZenML's own). ZenML ignores an unknown one silently, so a typo there would change nothing unseen.
ZENML_RUN_KEYS = (
    "build", "cache_policy", "cleanup_hook_source", "enable_artifact_metadata", "enable_artifact_visualization",
    "enable_cache", "enable_heartbeat", "enable_pipeline_logs", "enable_step_logs", "end_hook_source", "environment",
    "execution_mode", "extra", "failure_hook_source", "init_hook_kwargs", "init_hook_source", "model", "parameters",
    "pause_hook_source", "resume_hook_source", "retry", "run_name", "schedule", "secrets", "settings",
    "start_hook_source", "steps", "substitutions", "success_hook_source", "tags")
PIPELINE_PARAMETERS = ("config",)   # each pipeline takes its whole configuration as one parameter
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
MEDMERGE_FILES = ("medmerge.json", "medmerge_sft.json", ".medmerge-output.json")   # medmerge's records (atomic.MARKER last)
_SKIP = object()


def one_line(text: object) -> str:
    """``text`` on one line: its non-empty lines joined with '; '."""
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


def read_run_config(config_path: str | os.PathLike) -> dict:
    """``parameters.config`` of a run-config YAML; errors name the file and what is wrong."""
    doc = _read_doc(config_path)
    return doc["parameters"]["config"]


def _read_doc(config_path) -> dict:
    from medmerge.io.yaml_file import read_yaml

    try:
        doc = read_yaml(config_path, RunConfigError, "run configuration")
    except RunConfigError as exc:
        raise RunConfigError(one_line(exc)) from None
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("config"), dict):
        near = _nearest("parameters", doc) if isinstance(doc, dict) and "parameters" not in doc else None
        hint = f" (found {near!r}: did you mean 'parameters'?)" if near else ""
        raise RunConfigError(f"{config_path}: expected a mapping under parameters.config (the pipeline's "
                             f"config){hint}")
    return doc


def _nearest(word: str, options: Iterable[str]) -> str | None:
    got = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return got[0] if got else None


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    near = _nearest(word, options)
    return f"; did you mean {near!r}?" if near else ""


# ---------------------------------------------------------------------------------------------
# the problems of one file
# ---------------------------------------------------------------------------------------------

class _Problems:
    """The lines for one run-config file; ``failed`` holds the top-level keys already found wrong (a later
    check of such a key would only repeat the problem)."""

    def __init__(self, path: str):
        self.path = str(path)
        self.lines: list[str] = []
        self.failed: set[str] = set()
        self.locs: set[tuple] = set()

    def add(self, loc: tuple | str, message: str) -> None:
        loc = (loc,) if isinstance(loc, str) else tuple(loc)
        if loc in self.locs:   # one line per thing
            return
        self.locs.add(loc)
        if loc:
            self.failed.add(str(loc[0]))
        where = ".".join(str(x) for x in ("parameters", "config", *loc))
        message = one_line(message)
        key = str(loc[-1]) if loc else ""
        for prefix in (f"{key}: ", f"{'.'.join(map(str, loc))}: "):   # "picks: picks: ..." says it twice
            if key and message.startswith(prefix):
                message = message[len(prefix):]
        line = f"{self.path}: {where}: {message}"
        if line not in self.lines:
            self.lines.append(line)

    def add_file(self, message: str) -> None:
        line = f"{self.path}: {one_line(message)}"
        if line not in self.lines:
            self.lines.append(line)

    def ok(self, key: str) -> bool:
        return key not in self.failed


# ---------------------------------------------------------------------------------------------
# types: walking a pydantic model's annotations along a location
# ---------------------------------------------------------------------------------------------

def _members(tp) -> list:
    """The types ``tp`` admits: the members of a Union/Optional, Annotated unwrapped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _is_model(tp) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _item_types(tp) -> list:
    origin = get_origin(tp)
    if origin in (tuple, list, set, frozenset):
        return [m for a in get_args(tp) if a is not Ellipsis for m in _members(a)]
    return []


def _value_types(tp) -> list:
    if get_origin(tp) is dict:
        args = get_args(tp)
        return _members(args[1]) if len(args) == 2 else []
    return []


def _tag(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _walk(model, loc: tuple) -> tuple[tuple, object | None, tuple | None]:
    """``(clean location, model owning the last key, union branch point)`` for a pydantic error location:
    pydantic's union tags (``str``, ``TaskSpec``, ``function-after[...]``) are dropped; the branch point is
    the clean location at which a union was entered (None when none was)."""
    clean: list = []
    current = [model]
    owner = None
    branch = None
    for i, item in enumerate(loc):
        if isinstance(item, int):
            clean.append(item)
            current = [t for c in current for t in _item_types(c)] or current
            continue
        models = [t for t in current if _is_model(t)]
        hit = next((m for m in models if item in m.model_fields), None)
        if hit is not None:
            owner = hit
            clean.append(item)
            current = _members(hit.model_fields[item].annotation)
            continue
        dicts = [t for t in current if get_origin(t) is dict]
        if dicts and (i == len(loc) - 1 or not any(_tag(t) == item for t in current)):
            clean.append(item)
            current = [v for d in dicts for v in _value_types(d)]
            continue
        named = [t for t in current if _tag(t) == item or str(item).startswith(f"{_tag(t)}[")]
        if named and len(current) > 1:   # pydantic's tag of a union member: the branch it tried
            branch = tuple(clean) if branch is None else branch
            current = named
            continue
        if i == len(loc) - 1 and models:   # an unknown key of this model
            owner = models[0]
            clean.append(item)
            continue
        branch = tuple(clean) if branch is None else branch   # a tag of a validator (function-after[...])
    return tuple(clean), owner, branch


TYPE_ERRORS = {"string_type", "int_type", "int_parsing", "float_type", "float_parsing", "bool_type", "bool_parsing",
               "model_type", "model_attributes_type", "dict_type", "tuple_type", "list_type", "literal_error",
               "is_instance_of", "none_required", "int_from_float"}


def _error_message(err: dict, owner) -> str:
    kind = err["type"]
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind == "extra_forbidden":
        key = str(err["loc"][-1])
        return "unknown key" + (_did_you_mean(key, owner.model_fields) if owner is not None else "")
    if kind == "missing":
        return "required key missing"
    if kind in TYPE_ERRORS or kind.startswith(("greater_than", "less_than", "finite", "too_short", "too_long")):
        return f"{msg} (got {err.get('input')!r})"
    return msg


def pydantic_problems(exc, model, problems: _Problems, prefix: tuple = (), skip: Iterable[tuple] = ()) -> None:
    """One line per error of ``exc`` (a pydantic ValidationError of ``model``): the key path, what is wrong, and
    for an unknown key the nearest valid one. Several failed branches of one union (a value that is neither
    a name nor a mapping) are one line."""
    groups: dict[tuple, list] = {}
    order: list[tuple] = []
    for err in exc.errors():
        clean, owner, branch = _walk(model, tuple(err["loc"]))
        if any(clean[:len(loc)] == tuple(loc) for loc in skip):   # left out: an earlier line named it
            continue
        key = (branch,) if branch is not None else (clean, len(order))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append((clean, owner, err))
    for key in order:
        errs = groups[key]
        if key[0] is not None and len(key) == 1 and len(errs) > 1:   # a union's branches
            meaningful = [e for e in errs if e[2]["type"] not in TYPE_ERRORS]
            if meaningful:
                errs = meaningful
            else:
                msgs = list(dict.fromkeys(str(e[2]["msg"]) for e in errs))
                problems.add(prefix + key[0], f"{' or '.join(msgs)} (got {errs[0][2].get('input')!r})")
                continue
        for clean, owner, err in errs:
            problems.add(prefix + clean, _error_message(err, owner))


def strict_scan(model, data, problems: _Problems, prefix: tuple = ()) -> None:
    """What pydantic's lax mode lets through: a boolean or a string where only a number belongs (``true``
    would be read as 1, ``"8"`` as 8), and a non-finite number (``.nan``, ``.inf``) anywhere."""
    if not isinstance(data, dict) or not _is_model(model):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        _scan_value(_members(field.annotation), value, problems, prefix + (key,))


def _scan_value(allowed: list, value, problems: _Problems, loc: tuple) -> None:
    numeric = [t for t in allowed if t in (int, float)]
    if isinstance(value, float) and not math.isfinite(value):
        problems.add(loc, f"{value} is not a finite number")
        return
    literal = any(get_origin(t) is Literal for t in allowed)
    if numeric and bool not in allowed and (str not in allowed or isinstance(value, bool)) and not literal:
        kind = "boolean" if isinstance(value, bool) else "string" if isinstance(value, str) else None
        if kind is not None:
            problems.add(loc, f"expected a number, got the {kind} {value!r}")
            return
    if bool in allowed and not isinstance(value, bool) and value is not None and \
            all(t in (bool, type(None)) for t in allowed):
        problems.add(loc, f"expected true or false, got {value!r}")   # pydantic would read "yes", 1, "off"
        return
    models = [t for t in allowed if _is_model(t)]
    if isinstance(value, dict):
        if models:
            strict_scan(models[0], value, problems, loc)
        else:
            inner = [v for t in allowed for v in _value_types(t)]
            for k, v in value.items():
                if inner:
                    _scan_value(inner, v, problems, loc + (k,))
                elif isinstance(v, float) and not math.isfinite(v):
                    problems.add(loc + (k,), f"{v} is not a finite number")
    elif isinstance(value, (list, tuple)):
        items = [t for a in allowed for t in _item_types(a)]
        for i, v in enumerate(value):
            if items:
                _scan_value(items, v, problems, loc + (i,))
            elif isinstance(v, float) and not math.isfinite(v):
                problems.add(loc + (i,), f"{v} is not a finite number")


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
    shapes: :func:`medmerge.compat.check_compatible` on the headers, no tensor read), or None. Hub ids are
    left to the check_parents step."""
    from medmerge.compat import check_compatible
    from medmerge.io.checkpoint import Checkpoint

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


# ---------------------------------------------------------------------------------------------
# the run configurations
# ---------------------------------------------------------------------------------------------

def _runs_in_containers(doc: dict) -> bool:
    """Steps built into images (``settings: docker:``) see their own file system, not this machine's."""
    settings = doc.get("settings")
    return isinstance(settings, dict) and isinstance(settings.get("docker"), dict)


def _check_document(doc: dict, problems: _Problems) -> None:
    for key in doc:
        if str(key).startswith("x-"):   # YAML anchors' holders (x-gpu-step: &gpu ...): ZenML ignores them
            continue
        if key not in ZENML_RUN_KEYS:
            problems.add_file(f"unknown top-level key {key!r}{_did_you_mean(key, ZENML_RUN_KEYS)}")
    for key in doc["parameters"]:
        if key not in PIPELINE_PARAMETERS:
            problems.add_file(f"parameters.{key}: unknown key{_did_you_mean(key, PIPELINE_PARAMETERS)} "
                              f"(the pipeline takes its whole configuration as parameters.config)")


def _validate(model, raw: dict, problems: _Problems):
    """``model`` validated from ``raw`` with pydantic's errors as lines; ``(config or None, partial)``: when some
    keys are wrong, ``partial`` is validated without them (their defaults), for the checks of the rest."""
    from pydantic import ValidationError

    before = set(problems.locs)
    strict_scan(model, raw, problems)
    bad = set(problems.failed)
    # what is already named is left out (its default stands in), so pydantic reports only the rest
    dropped = {(k,) for k in bad} - {loc[:1] for loc in problems.locs - before if len(loc) > 1}
    cleaned = _without(raw, [loc for loc in problems.locs - before if len(loc) > 1 and loc[:1] not in dropped],
                       {loc[0] for loc in dropped})
    try:
        cfg = model.model_validate(cleaned, context={"preflight": True})
    except ValidationError as exc:
        pydantic_problems(exc, model, problems, skip=(problems.locs - before) | dropped)
        cfg = None
    except MedmergeError as exc:   # a model check across keys (promote names and shots, task and tasks ...)
        msg = str(exc)
        field = re.match(r"(\w+): ", msg)
        if field and field.group(1) in model.model_fields:
            problems.add(field.group(1), msg)
        else:
            problems.add((), msg)
        cfg = None
    if cfg is not None:
        return (None if bad else cfg), cfg
    keep = {k: v for k, v in raw.items() if k not in problems.failed}
    try:
        partial = model.model_validate(keep, context={"preflight": True})
    except (ValidationError, MedmergeError):
        partial = None
    return None, partial


def _without(raw: dict, locs: list[tuple], keys: set[str]) -> dict:
    """``raw`` without the top-level ``keys`` and the nested keys at ``locs`` (a location through a list
    drops its top-level key)."""
    import copy

    out = {k: copy.deepcopy(v) for k, v in raw.items() if k not in keys}
    for loc in locs:
        node = out
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and all(isinstance(x, str) for x in loc):
            node.pop(loc[-1], None)
        else:
            out.pop(loc[0], None)
    return out


class _View:
    """A key's value for the checks after validation: from the (partial) config when it validated, else the raw
    value; ``_SKIP`` for a key already found wrong."""

    def __init__(self, model, raw: dict, cfg, problems: _Problems):
        self.model, self.raw, self.cfg, self.problems = model, raw, cfg, problems

    def __call__(self, key: str):
        if not self.problems.ok(key):
            return _SKIP
        if self.cfg is not None:
            return getattr(self.cfg, key)
        if key in self.raw:
            return self.raw[key]
        field = self.model.model_fields[key]
        return field.get_default(call_default_factory=True)


def _common_checks(v: _View, problems: _Problems, parents: list[str], local: bool) -> None:
    out = v("output_dir")
    if out is not _SKIP:
        why = output_dir_problem(out, parents, local)
        if why:
            problems.add("output_dir", why)
    uri = v("tracking_uri")
    if uri is not _SKIP:
        from medmerge.tracking.names import configured_tracking_uri

        if uri is None and configured_tracking_uri():
            why = tracking_uri_problem(configured_tracking_uri())
            if why:
                problems.add("tracking_uri", f"(from MLFLOW_TRACKING_URI) {why}")
        elif uri is not None:
            why = tracking_uri_problem(uri)
            if why:
                problems.add("tracking_uri", why)
    for key in ("registered_model", "experiment"):
        name = v(key)
        if name is _SKIP:
            continue
        if key == "registered_model":
            why = model_name_problem(name)
        else:
            why = None if isinstance(name, str) and name.strip() else "experiment name is empty"
        if why:
            problems.add(key, why)


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


def _eval_data_problems(opts, local: bool) -> list[tuple[tuple, str]]:
    """The evaluation data: a ``data_dir`` that is a folder here holds every task file the suites need; the
    device exists here."""
    if opts is None or not local:
        return []
    why = device_problem(opts.device)
    if why:
        return [(("device",), why)]
    if opts.data_dir in (None, "sample"):
        return []
    from medmerge.evaluation.tasks import resolve_data_dir, suite_tasks, task_spec

    d = Path(resolve_data_dir(opts.data_dir)).expanduser()
    if not d.is_dir():
        what = "is a file, not a directory" if d.exists() else "does not exist"
        return [(("data_dir",), f"data directory {opts.data_dir} {what}")]
    out = []
    for tasks in suite_tasks(list(opts.suites)).values():
        for task in tasks:
            try:
                task_spec(task, d)
            except MedmergeError as exc:
                out.append((("data_dir",), one_line(exc)))
                return out   # the first missing file says enough about the folder
    return out


def _open_run_config(path: str | os.PathLike) -> tuple[_Problems, dict, bool]:
    """The problems collector, the checked document of the run config at ``path``, and whether its steps
    run on this machine (file-system checks apply); RunConfigError when the file cannot be read."""
    problems = _Problems(str(path))
    doc = _read_doc(path)
    _check_document(doc, problems)
    return problems, doc, not _runs_in_containers(doc)


def check_search(path: str | os.PathLike, overrides: dict | None = None):
    """``(SearchConfig or None, problem lines)`` for the merge_search run config at ``path``."""
    from medmerge.search import SearchConfig

    try:
        problems, doc, local = _open_run_config(path)
    except RunConfigError as exc:
        return None, [str(exc)]
    raw = {**doc["parameters"]["config"], **(overrides or {})}
    sweep_raw = _sweep_document(raw.get("sweep"), problems, local)
    cfg, partial = _validate(SearchConfig, raw, problems)
    v = _View(SearchConfig, raw, partial, problems)
    spec = partial.sweep if partial is not None and problems.ok("sweep") else None
    parents = list(spec.parent_refs) if spec is not None else [
        sweep_raw[k] for k in ("clinical", "instruct", "base") if isinstance(sweep_raw, dict)
        and isinstance(sweep_raw.get(k), str)]
    if problems.ok("sweep") and isinstance(sweep_raw, dict):
        for role in ("clinical", "instruct", "base"):
            ref = sweep_raw.get(role)
            if ref is not None or role != "base":
                why = checkpoint_problem(ref, f"parent {role}", local)
                if why:
                    problems.add(("sweep", role), why)
        if problems.ok("sweep") and local:
            why = compatibility_problem([sweep_raw[r] for r in ("clinical", "instruct", "base")
                                         if isinstance(sweep_raw.get(r), str)])
            if why:
                problems.add("sweep", why)
    _common_checks(v, problems, parents, local)
    storage = v("study_storage")
    if storage not in (_SKIP, None):
        why = sqlalchemy_url_problem(storage)
        if why:
            problems.add("study_storage", why)
    if partial is not None and problems.ok("data_dir") and problems.ok("suites") and problems.ok("device"):
        for loc, why in _eval_data_problems(partial, local):
            problems.add(loc, why)
    if spec is not None:
        _candidate_names(spec, v, problems)
    return cfg if not problems.lines else None, problems.lines


def _sweep_document(value, problems: _Problems, local: bool):
    """The sweep's mapping (inline, or read from the file it names); its unknown keys named with the nearest."""
    from medmerge.recipe import SweepSpec

    data = value
    if isinstance(value, str):
        p = Path(value).expanduser()
        if not local:
            return None
        if not p.is_file():
            problems.add("sweep", f"sweep file {value} " + ("is a directory" if p.is_dir() else "does not exist"))
            return None
        from medmerge.errors import RecipeError
        from medmerge.recipe import load_yaml

        try:
            data = load_yaml(p)
        except RecipeError as exc:
            problems.add("sweep", str(exc))
            return None
    if not isinstance(data, dict):
        return None
    keys = [*SweepSpec.model_fields, *SweepSpec.INPUT_SUGAR]
    for key in data:
        if key not in keys:
            where = ("sweep", key) if isinstance(value, dict) else ("sweep",)
            prefix = "" if isinstance(value, dict) else f"{value}: {key}: "
            problems.add(where, f"{prefix}unknown key{_did_you_mean(key, keys)}")
    return data


def _candidate_names(spec, v: _View, problems: _Problems) -> None:
    """``picks:`` and ``promote:`` names must be candidates of the grid (an Optuna search has none before it runs)."""
    from medmerge.promotion import named

    for key in ("picks", "promote"):
        value = v(key)
        if value is _SKIP or isinstance(value, str) or not isinstance(value, (list, tuple)):
            continue
        names = [n for n in named(tuple(value)) if isinstance(n, str)]
        if not names:
            continue
        if spec.search == "optuna":
            parents = {"clinical", "instruct"}
            unknown = [n for n in names if n not in parents]
            if unknown:
                problems.add(key, f"{unknown[0]!r}: search: optuna names its candidates while it runs, so "
                                  f"{key}: takes a keyword here ({_keywords(key)}), or the parents' names")
            continue
        try:
            known = [c.name for c in spec.evaluated_candidates()]
        except MedmergeError:
            continue
        for n in names:
            if n not in known:
                near = _did_you_mean(n, known)
                problems.add(key, f"{n!r} names no candidate of this grid{near} (candidates: {', '.join(known)})")
                break


def _keywords(key: str) -> str:
    from medmerge.promotion import PICK_KEYWORDS, POLICY_KEYWORDS

    return ", ".join(PICK_KEYWORDS if key == "picks" else POLICY_KEYWORDS)


def check_finetune(path: str | os.PathLike):
    """``(FinetuneConfig or None, problem lines)`` for the finetune run config at ``path``."""
    from medmerge.finetune import FinetuneConfig

    try:
        problems, doc, local = _open_run_config(path)
    except RunConfigError as exc:
        return None, [str(exc)]
    raw = doc["parameters"]["config"]
    cfg, partial = _validate(FinetuneConfig, raw, problems)
    v = _View(FinetuneConfig, raw, partial, problems)
    inits = v("initialisations")
    parents = []
    if inits is not _SKIP and isinstance(inits, (list, tuple)):
        for i, init in enumerate(inits):
            path_ = init.get("path") if isinstance(init, dict) else getattr(init, "path", None)
            name = init.get("name") if isinstance(init, dict) else getattr(init, "name", None)
            uri = init.get("model_uri") if isinstance(init, dict) else getattr(init, "model_uri", None)
            if isinstance(path_, str):
                parents.append(path_)
                why = checkpoint_problem(path_, f"initialisation {name!r}", local)
                if why:
                    problems.add(("initialisations", i, "path"), why)
            elif isinstance(uri, str) and uri.startswith("models:/"):
                model = re.split(r"[/@]", uri.removeprefix("models:/"), maxsplit=1)[0]
                why = model_name_problem(model, "registered model")
                if why or not re.fullmatch(r"models:/[^/@]+(/\d+|@[\w-]+)", uri):
                    problems.add(("initialisations", i, "model_uri"),
                                 why or f"{uri!r}: expected models:/NAME/VERSION or models:/NAME@alias")
    _common_checks(v, problems, parents, local)
    scorer = v("bertscore_model")
    if isinstance(scorer, str) and local and not Path(scorer).expanduser().exists() and \
            (not HUB_ID.match(scorer) or scorer.startswith((".", "~"))):
        problems.add("bertscore_model", f"BERTScore model {scorer} does not exist (a local model directory, or a "
                                        f"Hub id org/name)")
    if partial is not None and problems.ok("forgetting"):
        for loc, why in _eval_data_problems(partial.forgetting, local):
            problems.add(("forgetting", *loc), why)
    if partial is not None:
        _finetune_data(partial, problems, local)
    return cfg if not problems.lines else None, problems.lines


def _finetune_data(cfg, problems: _Problems, local: bool) -> None:
    """Each task's data: known task or an existing file, both splits present, and every shot size no larger
    than the training split; and each task's registered model name."""
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.generation.data import TASKS, load_task

    keys = ("task", "tasks", "data_dir", "train_split", "eval_split", "id_field", "input_field", "target_field",
            "shots")
    if not all(problems.ok(k) for k in keys):
        return
    for label, tc in cfg.task_configs():
        where = ("tasks",) if label else ("task",)
        if label and problems.ok("registered_model"):
            why = model_name_problem(tc.registered_model)
            if why:
                problems.add("registered_model", f"{why} (task {label})")
        task = tc.task
        if task not in TASKS and not Path(task).expanduser().is_file():
            if not local and ("/" in task or "." in task):
                continue
            what = "is a directory" if Path(task).is_dir() else "is neither a known task nor an existing file"
            problems.add(where, f"task {task!r} {what} (known tasks: {', '.join(sorted(TASKS))})")
            continue
        if not local:
            continue
        kw = dict(data_dir=resolve_data_dir(tc.data_dir), id_field=tc.id_field, input_field=tc.input_field,
                  target_field=tc.target_field)
        try:
            split = "train_split"
            train = load_task(task, tc.train_split, **kw)
            split = "eval_split"
            held = load_task(task, tc.eval_split, **kw)
        except MedmergeError as exc:
            msg = str(exc)
            key = "data_dir" if "data directory" in msg else split if "split" in msg else where
            problems.add(key if not label or key == "data_dir" else where, msg + (f" (task {label})" if label else ""))
            continue
        except OSError as exc:
            problems.add(where, f"task {task}: {exc.strerror or exc}")
            continue
        if not held:
            problems.add("eval_split", f"task {task}: no held-out examples in split {tc.eval_split!r}")
        sizes = [s for s in tc.shots if s not in ("full", 0)]
        too_big = [s for s in sizes if s > len(train)]
        if too_big:
            problems.add("shots", f"shots {too_big} exceed the {len(train)} training examples of {task} "
                                  f"[{tc.train_split}]" + (f" (task {label})" if label else "") +
                                  "; drop those sizes (\"full\" uses them all)")
        elif not train and any(s != 0 for s in tc.shots):
            problems.add("shots", f"task {task}: no training examples in split {tc.train_split!r}")


def check_run_configs(search: str | os.PathLike | None = None, finetune: str | os.PathLike | None = None, *,
                      search_overrides: dict | None = None):
    """Check the given run configs; ``(SearchConfig or None, FinetuneConfig or None)`` when all pass, else
    :class:`PreflightError` with every problem of both, one line each."""
    lines: list[str] = []
    s_cfg = f_cfg = None
    if search is not None:
        s_cfg, got = check_search(search, search_overrides)
        lines += got
    if finetune is not None:
        f_cfg, got = check_finetune(finetune)
        lines += got
    if lines:
        raise PreflightError(lines)
    return s_cfg, f_cfg
