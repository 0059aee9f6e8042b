"""Nested, seeded few-shot training subsets for learning curves.

:func:`few_shot_subsets` orders the examples by one seeded permutation and returns prefixes
of it, so every subset contains all smaller ones (the 16-shot set contains the 8-shot set,
and so on). The permutation is a sort on ``sha256(f"{seed}\\x00{key}")``, where ``key`` is
the example's ``id`` (a ``.id`` attribute or an ``"id"`` key; the position in the list when
there is none, ties broken by position). That makes it

* deterministic across processes, machines and Python versions (no ``hash()``, no RNG
  stream whose algorithm could change), and
* independent of the order the examples were loaded in: the same ids give the same subsets.

Sizes larger than the dataset are **skipped** (not capped, so a key ``n`` always means
exactly ``n`` examples); the whole dataset is under the key ``"full"`` (in permutation order,
so it too is a superset of every prefix) when ``include_full`` is true.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

__all__ = ["DEFAULT_SIZES", "few_shot_subsets", "seeded_order"]

T = TypeVar("T")

DEFAULT_SIZES: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512)


def _key(example: Any, position: int) -> str:
    rid = getattr(example, "id", None)
    if rid is None and isinstance(example, dict):
        rid = example.get("id")
    return f"id:{rid}" if rid is not None else f"pos:{position}"


def seeded_order(examples: Sequence[T], seed: int = 0) -> list[T]:
    """``examples`` in the seeded order that :func:`few_shot_subsets` takes prefixes of."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    keyed = []
    for pos, ex in enumerate(examples):
        digest = hashlib.sha256(f"{seed}\x00{_key(ex, pos)}".encode()).digest()
        keyed.append((digest, pos, ex))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [ex for _, _, ex in keyed]


def few_shot_subsets(
    examples: Sequence[T],
    sizes: Iterable[int] = DEFAULT_SIZES,
    seed: int = 0,
    include_full: bool = True,
) -> dict[str | int, list[T]]:
    """``{size: first size examples of the seeded order, ..., "full": all}``; see the module docstring.

    Keys are the requested sizes that fit (ascending, duplicates merged), then ``"full"``.
    Sizes must be positive integers; sizes larger than ``len(examples)`` are skipped.
    """
    wanted = sorted(set(_check_size(s) for s in sizes))
    order = seeded_order(list(examples), seed)
    out: dict[str | int, list[T]] = {n: order[:n] for n in wanted if n <= len(order)}
    if include_full:
        out["full"] = order
    return out


def _check_size(s: Any) -> int:
    if isinstance(s, bool) or not isinstance(s, int) or s <= 0:
        raise ValueError(f"few-shot sizes must be positive integers, got {s!r}")
    return s
