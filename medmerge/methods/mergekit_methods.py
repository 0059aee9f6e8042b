"""The seed methods mergekit implements, as small pure tensor functions.

Each calls mergekit's own per-tensor math (``mergekit.merge_methods.api.merge_tensors``),
never a re-implementation, so a tensor merged here equals what ``mergekit-yaml`` writes.
The streaming engine reaches the same code through mergekit's planner; these functions are
the direct, in-memory entry points and document each formula. Notation: θ_i are the inputs,
θ_0 the base, δ_i = θ_i − θ_0 the task vectors, w_i the weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from mergekit.merge_methods.api import merge_tensors

Tensors = Sequence[torch.Tensor]


def linear(tensors: Tensors, weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Linear (model soup): ``θ = Σ_i w_i θ_i / Σ_i w_i`` (without the division when normalize=False)."""
    return merge_tensors(tensors, "linear", parameters={"weight": list(weights), "normalize": normalize})


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """SLERP from a (the base) to b: ``θ = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b``,
    ``cos Ω = <a/‖a‖, b/‖b‖>``; falls back to ``(1−t)a + t b`` when |cos Ω| > 0.9995."""
    return merge_tensors([a, b], "slerp", parameters={"t": t}, base_index=0)


def _task_vector_method(method: str, base: torch.Tensor, tensors: Tensors, weights: Sequence[float],
                        **parameters) -> torch.Tensor:
    per_model = {"weight": list(weights)}
    for key in ("density", "gamma", "epsilon"):
        if key in parameters:
            value = parameters.pop(key)
            per_model[key] = list(value) if isinstance(value, (list, tuple)) else [value] * len(tensors)
    return merge_tensors([base, *tensors], method, base_index=0, parameters={**parameters, **per_model})


def task_arithmetic(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], **parameters) -> torch.Tensor:
    """Task Arithmetic: ``θ = θ_0 + λ Σ_i w_i δ_i`` (divided by Σ w_i when normalize=True)."""
    return _task_vector_method("task_arithmetic", base, tensors, weights, **parameters)


def ties(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float = 1.0,
         **parameters) -> torch.Tensor:
    """TIES: trim each δ_i to its top-``density`` magnitudes, elect the sign
    ``s = sign(Σ_i w_i δ̂_i)``, keep agreeing entries:
    ``θ = θ_0 + λ Σ_i w_i δ̂_i [sign δ̂_i = s] / Σ_i w_i [sign δ̂_i = s]``."""
    return _task_vector_method("ties", base, tensors, weights, density=density, **parameters)


def dare_ties(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float,
              **parameters) -> torch.Tensor:
    """DARE-TIES: drop each entry of δ_i with probability ``1 − density`` and rescale the rest by
    ``1/density`` (m ~ Bernoulli(density), δ̂_i = m ⊙ δ_i / density), then TIES sign election."""
    return _task_vector_method("dare_ties", base, tensors, weights, density=density, **parameters)


def dare_linear(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float,
                **parameters) -> torch.Tensor:
    """DARE linear: ``θ = θ_0 + λ Σ_i w_i (m_i ⊙ δ_i / density)``, m_i ~ Bernoulli(density)."""
    return _task_vector_method("dare_linear", base, tensors, weights, density=density, **parameters)


def della(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float,
          epsilon: float = 0.15, **parameters) -> torch.Tensor:
    """DELLA (MAGPRUNE + TIES): keep entry j of δ_i with probability
    ``p_j = density − ε + 2ε·rank(|δ_ij|)/(n−1)`` (rank within its row), rescale kept entries by
    ``1/p_j``, then TIES sign election and ``θ = θ_0 + λ Σ w_i δ̂_i / Σ w_i``."""
    return _task_vector_method("della", base, tensors, weights, density=density, epsilon=epsilon, **parameters)


def della_linear(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float,
                 epsilon: float = 0.15, **parameters) -> torch.Tensor:
    """DELLA linear: MAGPRUNE as in della, no sign election: ``θ = θ_0 + λ Σ_i w_i δ̂_i``."""
    return _task_vector_method("della_linear", base, tensors, weights, density=density, epsilon=epsilon,
                               **parameters)


def breadcrumbs(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float = 1.0,
                gamma: float = 0.01, **parameters) -> torch.Tensor:
    """Model Breadcrumbs: in each δ_i drop the largest ``gamma`` fraction of magnitudes (outliers)
    and the smallest, keeping a ``density`` fraction; ``θ = θ_0 + λ Σ_i w_i δ̂_i``."""
    return _task_vector_method("breadcrumbs", base, tensors, weights, density=density, gamma=gamma, **parameters)


def breadcrumbs_ties(base: torch.Tensor, tensors: Tensors, weights: Sequence[float], density: float = 1.0,
                     gamma: float = 0.01, **parameters) -> torch.Tensor:
    """Model Breadcrumbs with TIES sign election over the masked δ̂_i."""
    return _task_vector_method("breadcrumbs_ties", base, tensors, weights, density=density, gamma=gamma,
                               **parameters)
