"""What a merge plan is made of: one :class:`Step` per output tensor. The engine runs steps; a method plans
them (mergekit's planner through the engine, a native method through its registry entry's ``plan_steps``).
This module imports neither, so methods and the engine both build on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from medmerge.io.writer import TensorSpec

# load(parent ref, tensor name, cast=None, upcast=False) -> tensor, cast to ``cast`` and then,
# with ``upcast``, half precision widened to float32; results are shared within one output tensor
Loader = Callable[..., torch.Tensor]


@dataclass
class Step:
    """One output tensor of one merge."""

    name: str
    spec: TensorSpec
    reads: tuple[tuple[str, str], ...]           # (parent ref, tensor name) this step reads
    compute: Callable[[Loader], torch.Tensor]
    row_separable: bool = False
    seed: int | None = None                      # reseed torch before compute (stochastic methods)
