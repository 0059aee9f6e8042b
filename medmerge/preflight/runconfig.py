"""Preflight of whole run configurations: merge_search's and finetune's, one problem per line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from medmerge.errors import MedmergeError
from medmerge.preflight.problems import (
    HUB_ID,
    PIPELINE_PARAMETERS,
    SKIP,
    ZENML_RUN_KEYS,
    PreflightError,
    Problems,
    RunConfigError,
    did_you_mean,
    one_line,
    read_doc,
)
from medmerge.preflight.schema import pydantic_problems, strict_scan
from medmerge.preflight.values import (
    checkpoint_problem,
    compatibility_problem,
    device_problem,
    model_name_problem,
    output_dir_problem,
    sqlalchemy_url_problem,
    tracking_uri_problem,
)

# ---------------------------------------------------------------------------------------------
# the run configurations
# ---------------------------------------------------------------------------------------------

def _runs_in_containers(doc: dict) -> bool:
    """Steps built into images (``settings: docker:``) see their own file system, not this machine's."""
    settings = doc.get("settings")
    return isinstance(settings, dict) and isinstance(settings.get("docker"), dict)


def _check_document(doc: dict, problems: Problems) -> None:
    for key in doc:
        if str(key).startswith("x-"):   # YAML anchors' holders (x-gpu-step: &gpu ...): ZenML ignores them
            continue
        if key not in ZENML_RUN_KEYS:
            problems.add_file(f"unknown top-level key {key!r}{did_you_mean(key, ZENML_RUN_KEYS)}")
    for key in doc["parameters"]:
        if key not in PIPELINE_PARAMETERS:
            problems.add_file(f"parameters.{key}: unknown key{did_you_mean(key, PIPELINE_PARAMETERS)} "
                              f"(the pipeline takes its whole configuration as parameters.config)")


def _validate(model, raw: dict, problems: Problems):
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
        node: Any = out
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and all(isinstance(x, str) for x in loc):
            node.pop(loc[-1], None)
        else:
            out.pop(loc[0], None)
    return out


class _View:
    """A key's value for the checks after validation: from the (partial) config when it validated, else the raw
    value; ``SKIP`` for a key already found wrong."""

    def __init__(self, model, raw: dict, cfg, problems: Problems):
        self.model, self.raw, self.cfg, self.problems = model, raw, cfg, problems

    def __call__(self, key: str):
        if not self.problems.ok(key):
            return SKIP
        if self.cfg is not None:
            return getattr(self.cfg, key)
        if key in self.raw:
            return self.raw[key]
        field = self.model.model_fields[key]
        return field.get_default(call_default_factory=True)


def _common_checks(v: _View, problems: Problems, parents: list[str], local: bool) -> None:
    out = v("output_dir")
    if out is not SKIP:
        why = output_dir_problem(out, parents, local)
        if why:
            problems.add("output_dir", why)
    uri = v("tracking_uri")
    if uri is not SKIP:
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
        if name is SKIP:
            continue
        if key == "registered_model":
            why = model_name_problem(name)
        else:
            why = None if isinstance(name, str) and name.strip() else "experiment name is empty"
        if why:
            problems.add(key, why)




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

    d = Path(resolve_data_dir(opts.data_dir) or opts.data_dir).expanduser()
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


def _open_run_config(path: str | os.PathLike) -> tuple[Problems, dict, bool]:
    """The problems collector, the checked document of the run config at ``path``, and whether its steps
    run on this machine (file-system checks apply); RunConfigError when the file cannot be read."""
    problems = Problems(str(path))
    doc = read_doc(path)
    _check_document(doc, problems)
    return problems, doc, not _runs_in_containers(doc)


def check_search(path: str | os.PathLike, overrides: dict | None = None):
    """``(SearchConfig or None, problem lines)`` for the merge_search run config at ``path``."""
    from medmerge.selection.search import SearchConfig

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
    if storage not in (SKIP, None):
        why = sqlalchemy_url_problem(storage)
        if why:
            problems.add("study_storage", why)
    if partial is not None and problems.ok("data_dir") and problems.ok("suites") and problems.ok("device"):
        for loc, why in _eval_data_problems(partial, local):
            problems.add(loc, why)
    if spec is not None:
        _candidate_names(spec, v, problems)
    return cfg if not problems.lines else None, problems.lines


def _sweep_document(value, problems: Problems, local: bool):
    """The sweep's mapping (inline, or read from the file it names); its unknown keys named with the nearest."""
    from medmerge.merge.recipe import SweepSpec

    data = value
    if isinstance(value, str):
        p = Path(value).expanduser()
        if not local:
            return None
        if not p.is_file():
            problems.add("sweep", f"sweep file {value} " + ("is a directory" if p.is_dir() else "does not exist"))
            return None
        from medmerge.errors import RecipeError
        from medmerge.merge.recipe import load_yaml

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
            problems.add(where, f"{prefix}unknown key{did_you_mean(key, keys)}")
    return data


def _candidate_names(spec, v: _View, problems: Problems) -> None:
    """``picks:`` and ``promote:`` names must be candidates of the grid (an Optuna search has none before it runs)."""
    from medmerge.selection.promotion import named

    for key in ("picks", "promote"):
        value = v(key)
        if value is SKIP or isinstance(value, str) or not isinstance(value, (list, tuple)):
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
                near = did_you_mean(n, known)
                problems.add(key, f"{n!r} names no candidate of this grid{near} (candidates: {', '.join(known)})")
                break


def _keywords(key: str) -> str:
    from medmerge.selection.promotion import PICK_KEYWORDS, POLICY_KEYWORDS

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
    if inits is not SKIP and isinstance(inits, (list, tuple)):
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


def _finetune_data(cfg, problems: Problems, local: bool) -> None:
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
