"""Reading a YAML file a user names (a recipe, a sweep, a run configuration): every way it can be wrong is
one line naming the file, raised as the caller's error class (exit 2), never a traceback.

The YAML is read strictly: a key written twice in one mapping and a non-finite number (``.nan``,
``.inf``, ``1.0e+999``) are errors naming the key path and the file (PyYAML keeps the last duplicate
and reads ``.nan`` as a float silently). ``1e-3`` is read as the number YAML 1.2 makes it, not the
string YAML 1.1 does. ``Real`` and ``Int`` are the pydantic field types for numbers read from YAML:
a boolean or a string where a number belongs is refused (pydantic's default would read ``true`` as 1
and ``"0.5"`` as 0.5)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from medmerge.errors import MedmergeError

FLOAT_TAG = "tag:yaml.org,2002:float"


def _loader():
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        """SafeLoader that also reads YAML 1.2 exponents without a dot or a sign (``1e-3``, ``2E5``)."""

    StrictLoader.add_implicit_resolver(FLOAT_TAG, re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                       list("-+0123456789"))
    return StrictLoader


def _path(parent: str, key: Any, index: bool = False) -> str:
    if index:
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _check_node(loader, node, path: str, seen: set) -> str | None:
    """The first problem in the node tree (a repeated key, a non-finite number), or None."""
    import yaml

    if id(node) in seen:                     # an alias: checked where its anchor is
        return None
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            if key is not None and knode.tag != "tag:yaml.org,2002:merge":
                key = loader.construct_object(knode)   # 1 and "1" are different keys; 1 and 0x1 are not
                if not isinstance(key, (list, dict)):
                    if key in lines:
                        first, again = lines[key] + 1, knode.start_mark.line + 1
                        where = f"lines {first} and {again}" if first != again else f"line {first}"
                        return f"{_path(path, key)}: key {key!r} written twice in one mapping ({where})"
                    lines[key] = knode.start_mark.line
            why = _check_node(loader, vnode, _path(path, key if key is not None else "?"), seen)
            if why:
                return why
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            why = _check_node(loader, child, _path(path, i, index=True), seen)
            if why:
                return why
    elif isinstance(node, yaml.ScalarNode) and node.tag == FLOAT_TAG:
        value = loader.construct_object(node)
        if not math.isfinite(value):
            return f"{path or 'the document'}: {node.value} is not a finite number (line {node.start_mark.line + 1})"
    return None


def load_strict(stream, name: str = "<string>") -> Any:
    """The document in ``stream`` (a str or a text file), read strictly; :class:`ValueError` naming the
    key path on a repeated key or a non-finite number, ``yaml.YAMLError`` on a syntax error."""
    loader = _loader()(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        why = _check_node(loader, node, "", set())
        if why:
            raise ValueError(why)
        loader.constructed_objects = {}
        loader.recursive_objects = {}
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike, error: type[MedmergeError], what: str = "config file"):
    """The parsed document of ``path``. Missing, a directory, unreadable, not UTF-8, not YAML, a key
    written twice or a non-finite number: ``error``, one line naming the file (and the key)."""
    import yaml

    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            return load_strict(fh, str(p))
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise error(f"{what} {p} is not UTF-8 text (binary?); expected a YAML file") from None
    except OSError as exc:
        raise error(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {p} is not valid YAML: {' '.join(str(exc).split())}") from None
    except ValueError as exc:
        raise error(f"{p}: {exc}") from None


# -- numbers in models read from YAML ------------------------------------------------------------
def _number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"{'true' if value else 'false'} is a boolean, not a number")
    if isinstance(value, str):
        raise ValueError(f"{value!r} is a string, not a number")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


def _integer(value: Any) -> Any:
    _number(value)
    if isinstance(value, float):
        raise ValueError(f"{value!r} is not an integer")
    return value


# an int or a float (ints are fine for reals), finite; never a bool or a string
Real = Annotated[float, BeforeValidator(_number), AfterValidator(_finite)]
# an int; never a bool, a string or a float (3.0 included)
Int = Annotated[int, BeforeValidator(_integer)]
