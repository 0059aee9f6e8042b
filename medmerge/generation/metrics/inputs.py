"""The input check every generation metric shares: two equally long, non-empty lists of strings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet


def check_inputs(predictions, references) -> tuple[list[str], list[str]]:
    """Two equally long, non-empty collections of strings, as lists; ``ValueError`` otherwise.

    Any iterable of strings works (list, tuple, numpy array, dataset column); a bare string, a
    mapping or a set is refused (a string would be scored character by character).
    """
    checked = []
    for name, seq in (("predictions", predictions), ("references", references)):
        if isinstance(seq, (str, bytes, Mapping, AbstractSet)) or not isinstance(seq, Iterable):
            raise ValueError(
                f"{name} must be a list of strings (one per example), got {type(seq).__name__}"
            )
        seq = list(seq)
        checked.append(seq)
        for i, item in enumerate(seq):
            if not isinstance(item, str):
                raise ValueError(
                    f"{name}[{i}] must be a string, got {type(item).__name__}: {item!r:.80}"
                )
    predictions, references = checked
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} predictions, "
            f"{len(references)} references (one reference per prediction)"
        )
    if not predictions:
        raise ValueError("predictions and references are empty: nothing to score")
    return predictions, references
