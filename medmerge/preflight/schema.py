"""Preflight: pydantic's errors as one line each, and the strict scan of a document against a configuration
model's annotations (a boolean or a string where a number belongs, ``.nan``/``.inf``)."""

from __future__ import annotations

import math
import types
from collections.abc import Iterable
from typing import Annotated, Literal, Union, get_args, get_origin

from medmerge.preflight.problems import Problems, did_you_mean

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
        return "unknown key" + (did_you_mean(key, owner.model_fields) if owner is not None else "")
    if kind == "missing":
        return "required key missing"
    if kind in TYPE_ERRORS or kind.startswith(("greater_than", "less_than", "finite", "too_short", "too_long")):
        return f"{msg} (got {err.get('input')!r})"
    return msg


def pydantic_problems(exc, model, problems: Problems, prefix: tuple = (), skip: Iterable[tuple] = ()) -> None:
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


def strict_scan(model, data, problems: Problems, prefix: tuple = ()) -> None:
    """What pydantic's lax mode lets through: a boolean or a string where only a number belongs (``true``
    would be read as 1, ``"8"`` as 8), and a non-finite number (``.nan``, ``.inf``) anywhere."""
    if not isinstance(data, dict) or not _is_model(model):
        return
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        _scan_value(_members(field.annotation), value, problems, prefix + (key,))


def _scan_value(allowed: list, value, problems: Problems, loc: tuple) -> None:
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


