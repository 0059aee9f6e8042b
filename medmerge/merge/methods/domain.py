"""What a merge parameter may hold: its type and range (a :class:`Domain`), and the forms a value takes.

A value is a scalar, a gradient (a list of scalars interpolated across layers) or filtered values
(mergekit's ``[{filter: self_attn, value: 0.9}, {value: 0.5}]``, whose values are scalars or
gradients). :func:`check_setting` checks every scalar of any of these forms against the domain;
:func:`evaluate` resolves a setting at one gradient position for tensors matching one filter, as
mergekit's ``evaluate_setting`` does, so rules that join parameters (DELLA's density ± epsilon, the
sum of normalised weights) can be checked at every point that matters before any tensor is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from medmerge.errors import RecipeError

REAL, INT, BOOL, CHOICE = "real", "int", "bool", "choice"


class ParameterError(RecipeError, ValueError):
    """A parameter value of the wrong type or outside its domain. A ValueError too, so that raised inside
    a pydantic validator it reaches the user as that validator's one-line message."""


def show(value: Any) -> str:
    """A value as the user wrote it in YAML: ``true``, ``'abc'``, ``0.3``, ``.nan``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def is_number(value: Any) -> TypeGuard[float]:
    """An int or a float, never a bool (YAML's ``true`` is not 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Domain:
    """A parameter's type and range: ``kind`` real, int, bool or choice; for numbers ``low``/``high``
    (None: unbounded) with open or closed ends. Every real is finite."""

    kind: str = REAL
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def __str__(self) -> str:
        if self.kind == BOOL:
            return "true or false"
        if self.kind == CHOICE:
            return "one of " + ", ".join(str(c) for c in self.choices)
        what = "a finite number" if self.kind == REAL else "an integer"
        if self.low is None and self.high is None:
            return what
        if self.low is not None and self.high is not None:
            return f"{'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {_num(self.low)}"
        assert self.high is not None   # the one bound left
        return f"{what} {'<' if self.high_open else '<='} {_num(self.high)}"

    @property
    def expected(self) -> str:
        """What belongs here, as a noun: ``a number in (0, 1]``, ``a finite number > 0``, ``true or false``."""
        if self.numeric and self.low is not None and self.high is not None:
            return f"{'a number' if self.kind == REAL else 'an integer'} in {self}"
        return str(self)

    @property
    def numeric(self) -> bool:
        return self.kind in (REAL, INT)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not in this domain (one phrase), or None when it is."""
        if self.kind == BOOL:
            return None if isinstance(value, bool) else f"{show(value)} is not a boolean (true or false)"
        if self.kind == CHOICE:
            return None if value in self.choices and type(value) is type(self.choices[0]) else \
                f"{show(value)} must be one of {', '.join(str(c) for c in self.choices)}"
        if isinstance(value, bool):
            return f"{show(value)} is a boolean; expected {self.expected}"
        if isinstance(value, str):
            return f"{show(value)} is a string; expected {self.expected}"
        if not is_number(value):
            return f"{show(value)} is not a number; expected {self.expected}"
        if self.kind == INT and not isinstance(value, int):
            return f"{show(value)} is not an integer; expected {self.expected}"
        if not math.isfinite(value):
            return f"{show(value)} is not a finite number"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"{show(value)} is outside {self}" if self.high is not None else f"{show(value)} must be {self}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"{show(value)} is outside {self}" if self.low is not None else f"{show(value)} must be {self}"
        return None

    def contains(self, value: Any) -> bool:
        return self.problem(value) is None

    def check(self, value: Any, where: str) -> None:
        """Raise :class:`ParameterError` ``"{where}: {why}"`` unless ``value`` is in this domain."""
        why = self.problem(value)
        if why is not None:
            raise ParameterError(f"{where}: {why}")

    def check_range(self, low: Any, high: Any, where: str) -> None:
        """A closed search range ``[low, high]`` must lie inside the domain: both ends are checked."""
        if not self.numeric:
            raise ParameterError(f"{where}: a {{low, high}} range needs a numeric parameter; this one is {self}")
        self.check(low, f"{where}.low")
        self.check(high, f"{where}.high")


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> Domain:
    return Domain(REAL, low, high, low_open, high_open)


FINITE = real()
UNIT = real(0, 1)                                   # [0, 1]
BOOLEAN = Domain(BOOL)


def choice(*choices: str) -> Domain:
    return Domain(CHOICE, choices=tuple(choices))


# -- the forms a value takes -------------------------------------------------------------------
FILTER_KEYS = ("filter", "value")


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str))


def check_setting(domain: Domain, value: Any, where: str) -> None:
    """Check a whole setting: a scalar, a gradient, or filtered values (a list of ``{filter, value}``
    or one such mapping). Every scalar in it must be in ``domain``; the error names its key path."""
    if isinstance(value, dict):
        _check_filtered(domain, value, where)
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ParameterError(f"{where}: an empty list (give a value, a gradient [v0, v1, ...] or "
                                 "filtered values [{filter: ..., value: ...}])")
        if all(isinstance(e, dict) for e in value):
            for i, entry in enumerate(value):
                _check_filtered(domain, entry, f"{where}[{i}]")
        elif all(_scalar(e) for e in value):
            for i, e in enumerate(value):
                domain.check(e, f"{where}[{i}]")
        else:
            raise ParameterError(f"{where}: a list is a gradient of values or a list of filtered values "
                                 f"[{{filter: ..., value: ...}}], not {show(value)}")
    else:
        domain.check(value, where)


def _check_filtered(domain: Domain, entry: dict, where: str) -> None:
    extra = [k for k in entry if k not in FILTER_KEYS]
    if extra:
        raise ParameterError(f"{where}: unknown key {extra[0]!r} in a filtered value (it takes filter and value)")
    if "value" not in entry:
        raise ParameterError(f"{where}: a filtered value needs value:")
    f = entry.get("filter")
    if f is not None and not (isinstance(f, str) and f):
        raise ParameterError(f"{where}.filter: {show(f)} is not a tensor-name substring")
    v = entry["value"]
    if isinstance(v, dict) or (isinstance(v, (list, tuple)) and not all(_scalar(e) for e in v)):
        raise ParameterError(f"{where}.value: a filtered value is a value or a gradient, not {show(v)}")
    check_setting(domain, v, f"{where}.value")


def _entries(setting: Any) -> list[dict] | None:
    if isinstance(setting, dict):
        return [setting]
    if isinstance(setting, (list, tuple)) and setting and all(isinstance(e, dict) for e in setting):
        return list(setting)
    return None


def filters(setting: Any) -> set[str]:
    """The filter strings a setting names."""
    entries = _entries(setting)
    return {e["filter"] for e in entries if e.get("filter") not in (None, "*")} if entries else set()


def positions(setting: Any) -> set[float]:
    """The gradient positions in [0, 1] where a setting has a point (i / (n − 1) for a gradient of n)."""
    entries = _entries(setting)
    if entries is not None:
        return set().union(*(positions(e.get("value")) for e in entries))
    if isinstance(setting, (list, tuple)) and len(setting) > 1:
        return {i / (len(setting) - 1) for i in range(len(setting))}
    return set()


def evaluate(setting: Any, region: str | None, t: float) -> Any:
    """The setting's value at gradient position ``t`` for a tensor whose name contains ``region``
    (None: a tensor no filter matches), as mergekit's ``evaluate_setting``: the first filtered entry
    whose filter is absent, ``*`` or part of ``region`` wins; numeric gradients interpolate, others
    select. None when no entry matches (mergekit then falls back to the next scope or the default)."""
    entries = _entries(setting)
    if entries is not None:
        for e in entries:
            f = e.get("filter")
            if f is None or f == "*" or (region is not None and f in region):
                return evaluate(e.get("value"), region, t)
        return None
    if isinstance(setting, (list, tuple)):
        if not setting:
            return None
        if not all(is_number(e) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1] if frac else setting[i0]
    return setting


def points(settings: Iterable[Any]) -> list[tuple[str | None, float]]:
    """Every (filter region, gradient position) at which settings joined by a rule must be checked:
    the union of their filters (and None, a tensor no filter matches) times the union of their
    gradient points (0 alone when none is a gradient). Between two points every numeric gradient is linear."""
    settings = list(settings)
    regions: set[str] = set().union(*(filters(s) for s in settings)) if settings else set()
    ts = sorted({0.0}.union(*(positions(s) for s in settings)) if settings else {0.0})
    return [(r, t) for r in [None, *sorted(regions)] for t in ts]


def at(region: str | None, t: float, n_points: int, n_regions: int) -> str:
    """`` (at gradient position 0.5, tensors matching 'self_attn')``, or '' where there is one point."""
    parts = []
    if n_points > 1:
        parts.append(f"at gradient position {t:g}")
    if region is not None:
        parts.append(f"tensors matching {region!r}")
    elif n_regions > 1:
        parts.append("tensors no filter matches")
    return f" ({', '.join(parts)})" if parts else ""
