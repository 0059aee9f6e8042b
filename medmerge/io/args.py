"""One parser per kind of command-line argument, as click parameter types.

A value that does not parse or lies outside its domain is a click usage error: exit 2 and one line
naming the option and the value, before any work starts.

* :data:`SIZE`: a byte size (``500MB``, ``2GiB``, ``1.5GB``, ``1234``): positive, finite, whole bytes.
* :func:`count`: a whole number with a lower bound (``--limit``, ``--num-gpus``: at least 1; shots: 0).
* :data:`BATCH_SIZE`: a count of at least 1, or ``auto``.
* :data:`GIB`: an amount of memory in GiB: a finite number above zero.
"""

from __future__ import annotations

import math

import click

from medmerge.io.writer import parse_size


class SizeType(click.ParamType):
    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            raw = value
        else:
            raw = str(value)
        try:
            return parse_size(raw)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class CountType(click.ParamType):
    """A whole number >= ``minimum`` (written as digits: ``1.5``, ``1e3``, ``nan`` are refused)."""

    name = "count"

    def __init__(self, minimum: int = 1):
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if isinstance(value, int):
            n = value
        else:
            text = str(value).strip()
            try:
                n = int(text, 10)
            except ValueError:
                self.fail(f"{value!r} is not a whole number", param, ctx)
        if n < self.minimum:
            what = "positive" if self.minimum == 1 else f">= {self.minimum}"
            self.fail(f"{n} is not allowed: it must be {what}", param, ctx)
        return n

    def __repr__(self) -> str:
        return f"COUNT(>={self.minimum})"


def count(minimum: int = 1) -> CountType:
    return CountType(minimum)


class BatchSizeType(CountType):
    name = "batch size"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


class PositiveFloatType(click.ParamType):
    """A finite real number above zero (``nan``, ``inf``, ``0`` and negatives are refused)."""

    name = "number"

    def __init__(self, unit: str = ""):
        self.unit = unit

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if x <= 0:
            self.fail(f"{value!r} is not allowed: it must be above zero", param, ctx)
        return x


SIZE = SizeType()
BATCH_SIZE = BatchSizeType(1)
GIB = PositiveFloatType("GiB")
PORT = click.IntRange(0, 65535)
