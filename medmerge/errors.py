"""Errors medmerge raises on bad input. Each names the offending thing.

The CLI turns any :class:`MedmergeError` into a one-line message and exit code 2,
so users see what is wrong rather than a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class MedmergeError(Exception):
    """Base class for every user-facing error."""


class RecipeError(MedmergeError):
    """A recipe or sweep YAML is malformed, names an unknown method, or an undeclared parameter."""


class CompatibilityError(MedmergeError):
    """Parents cannot be merged: architecture, tensors, shapes, vocabulary, adapters, NaN/Inf."""


class CheckpointError(MedmergeError):
    """A checkpoint is missing, unreadable, or in a refused format (pickle without --allow-pickle)."""


class OutputError(MedmergeError):
    """The output cannot be written (exists already, disk full, ...)."""


class NonFiniteOutputError(RecipeError):
    """Finite parents merged by a recipe give NaN or Inf in an output tensor: nothing is written."""


@contextmanager
def as_value_error() -> Iterator[None]:
    """Inside a pydantic validator: a MedmergeError leaves as a ValueError with its text, which pydantic reports
    under the key being validated, together with every other bad key of the model."""
    try:
        yield
    except MedmergeError as exc:
        raise ValueError(str(exc)) from None


def not_blank(value: str, info) -> str:
    """A field validator for names (registered model, experiment): an empty or blank one is named."""
    if not value.strip():
        raise ValueError(f"{info.field_name} is empty")
    return value
