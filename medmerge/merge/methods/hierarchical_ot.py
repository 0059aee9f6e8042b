"""Hierarchical Cosine-OT-LERP, which mergekit lacks: the merge of the hierarchical study ("A Novel
Hierarchical Integration Method for Efficient Model Merging in Medical LLMs", Timilsina et al.).

For two fine-tunes A (the reference) and B of one base:

* every weight tensor gets its own interpolation weight from the task vectors
  ``Δ_A = A − base`` and ``Δ_B = B − base`` over the whole flattened tensor::

      w = max(0, cos(Δ_A, Δ_B)),     w = 0 when ‖Δ_A‖ = 0 or ‖Δ_B‖ = 0

* attention projections first align B's heads to A's: split A and B into heads,
  ``C[i, j] = 1 − cos(head A_i, head B_j)``, ``π = linear_sum_assignment(C)``,
  ``B_aligned head i = B head π(i)``; then ``merged = (1 − w)·A + w·B_aligned``;
* every other tensor: ``merged = (1 − w)·A + w·B``.

Head layout comes from data (:mod:`medmerge.merge.arch`, ``resources/architectures.yaml``) and
the checkpoint's ``config.json``: q/k/v weights are ``[heads·head_dim, hidden]`` and split by
rows in blocks of ``head_dim`` (k and v use ``num_key_value_heads``); o_proj is
``[hidden, n_heads·head_dim]`` and splits by columns; q/k/v biases split like their weights
and move with their heads; a fused ``qkv_proj`` (Phi-3) is split into q, k, v, each merged
as the unfused projection would be, and rejoined (likewise ``gate_up_proj``, by parts).
``align="per_projection"`` aligns each projection on its own (the paper's Algorithm 2);
``align="per_layer"`` finds one permutation per layer from q, k, v and o together and
applies it to all four, moving each key/value head with its group of query heads, so B's
function is kept intact. An architecture or attention tensor the table does not know is
refused when the merge is planned.

w is computed on the unaligned B, as the method states (for every weight tensor, over
the whole flattened tensor); alignment changes what B contributes, not how much.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:   # imported by the engine at run time (plan_steps): no cycle through these
    from medmerge.io.checkpoint import Checkpoint
    from medmerge.merge.plan import Step
    from medmerge.merge.recipe import Recipe

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def cosine_weight(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> float:
    """``w = max(0, cos(A − base, B − base))`` over the flattened tensors; 0 if either norm is 0."""
    da = (a.to(torch.float64) - base.to(torch.float64)).reshape(-1)
    db = (b.to(torch.float64) - base.to(torch.float64)).reshape(-1)
    na, nb = torch.linalg.vector_norm(da), torch.linalg.vector_norm(db)
    if na == 0 or nb == 0:
        return 0.0
    return max(0.0, float(torch.dot(da, db) / (na * nb)))


def lerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """``(1 − w)·a + w·b`` computed in float32 (float64 stays float64), returned in a's dtype."""
    dt = _work_dtype(a)
    return ((1 - w) * a.to(dt) + w * b.to(dt)).to(a.dtype)


def split_heads(w: torch.Tensor, head_dim: int, by_columns: bool) -> torch.Tensor:
    """Heads as rows of a 2-D matrix ``[n_heads, head_dim·other]`` (rows of q/k/v, columns of o;
    a 1-D bias splits into ``[n_heads, head_dim]``)."""
    if w.dim() == 1:
        return w.reshape(-1, head_dim)
    if by_columns:
        out, inner = w.shape
        return w.reshape(out, inner // head_dim, head_dim).permute(1, 0, 2).reshape(inner // head_dim, -1)
    rows, inner = w.shape
    return w.reshape(rows // head_dim, head_dim * inner)


def permute_heads(w: torch.Tensor, perm, head_dim: int, by_columns: bool) -> torch.Tensor:
    """Return w whose head i is w's head ``perm[i]``."""
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long)
    if w.dim() == 1:
        return w.reshape(-1, head_dim)[perm].reshape(-1)
    if by_columns:
        out, inner = w.shape
        return w.reshape(out, inner // head_dim, head_dim)[:, perm, :].reshape(out, inner)
    rows, inner = w.shape
    return w.reshape(rows // head_dim, head_dim, inner)[perm].reshape(rows, inner)


def head_cost(a_heads: torch.Tensor, b_heads: torch.Tensor) -> np.ndarray:
    """``C[i, j] = 1 − cos(A_i, B_j)`` for head matrices ``[n, d]`` (zero heads have cosine 0)."""
    a = a_heads.to(torch.float64)
    b = b_heads.to(torch.float64)
    an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-30)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (1.0 - an @ bn.T).numpy()


def align_heads(a_heads: torch.Tensor, b_heads: torch.Tensor) -> np.ndarray:
    """π minimising Σ_i C[i, π(i)] (scipy's linear_sum_assignment on ``1 − cos``)."""
    rows, cols = linear_sum_assignment(head_cost(a_heads, b_heads))
    return cols[np.argsort(rows)]


def merge_projection(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor, head_dim: int,
                     by_columns: bool, perm=None) -> torch.Tensor:
    """One attention projection: ``(1 − w)·A + w·B_aligned`` with w from the unaligned task vectors.

    ``perm`` (B head π(i) goes to slot i) is computed from this projection alone when not given.
    """
    w = cosine_weight(a, b, base)
    if perm is None:
        perm = align_heads(split_heads(a, head_dim, by_columns), split_heads(b, head_dim, by_columns))
    return lerp(a, permute_heads(b, perm, head_dim, by_columns), w)


def merge_tensor(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Any non-attention tensor: ``(1 − w)·A + w·B`` with ``w = max(0, cos(Δ_A, Δ_B))``."""
    return lerp(a, b, cosine_weight(a, b, base))


def layer_permutation(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], head_dim: int,
                      n_heads: int, n_kv_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """One alignment per layer from q, k, v and o together, respecting key/value groups.

    Query heads ``g·G … g·G+G−1`` share kv head g (G = n_heads / n_kv_heads). B's kv group
    σ(g) moves to slot g, and inside each matched pair of groups the query heads are matched
    by a second assignment, so every query head keeps its kv head and B's function is
    unchanged. Costs add ``1 − cos`` over the projections involved:
    kv pair cost = k + v head costs + the optimal within-group q + o cost.

    Returns (query-head permutation of length n_heads, kv-head permutation of length n_kv_heads).
    """
    G = n_heads // n_kv_heads
    cq = head_cost(split_heads(a["q_proj"], head_dim, False), split_heads(b["q_proj"], head_dim, False))
    co = head_cost(split_heads(a["o_proj"], head_dim, True), split_heads(b["o_proj"], head_dim, True))
    ck = head_cost(split_heads(a["k_proj"], head_dim, False), split_heads(b["k_proj"], head_dim, False))
    cv = head_cost(split_heads(a["v_proj"], head_dim, False), split_heads(b["v_proj"], head_dim, False))
    cqo = cq + co
    group_cost = ck + cv
    inner: dict[tuple[int, int], np.ndarray] = {}
    for g in range(n_kv_heads):
        for h in range(n_kv_heads):
            block = cqo[g * G:(g + 1) * G, h * G:(h + 1) * G]
            r, c = linear_sum_assignment(block)
            inner[g, h] = c[np.argsort(r)]
            group_cost[g, h] += block[r, c].sum()
    r, c = linear_sum_assignment(group_cost)
    kv_perm = c[np.argsort(r)]
    q_perm = np.concatenate([kv_perm[g] * G + inner[g, kv_perm[g]] for g in range(n_kv_heads)])
    return q_perm, kv_perm


# ------------------------------------------------------------------------------------------------
# planning: what the engine runs (the registry entry's ``plan_steps``)
# ------------------------------------------------------------------------------------------------
_ROLE_KEY = dict(zip("qkvo", ATTENTION_PROJECTIONS))   # layer_permutation's names for the four roles


def merge_structured(t, ta: torch.Tensor, tb: torch.Tensor, t0: torch.Tensor, head_dim: int, perm_for) -> torch.Tensor:
    """One tensor of a :class:`medmerge.merge.arch.TensorLayout`: each part (q, k, v of a fused qkv_proj,
    or the whole tensor) merged as the unfused tensor would be, parts rejoined along rows.

    ``perm_for(role)`` gives the head permutation for q/k/v/o parts; parts without a role
    (``gate_up_proj``'s halves) are merged element-wise.
    """
    outs = []
    for p in t.parts:
        a, b, z = (x[p.start:p.stop] for x in (ta, tb, t0)) if t.fused else (ta, tb, t0)
        if p.role is None:
            outs.append(merge_tensor(a, b, z))
        else:
            outs.append(merge_projection(a, b, z, head_dim, by_columns=p.role == "o", perm=perm_for(p.role)))
    return torch.cat(outs) if t.fused else outs[0]


def plan_steps(recipe: Recipe, parents: Mapping[str, Checkpoint]) -> list[Step]:
    """The engine's steps for ``recipe``: one per tensor of A, attention tensors head-aligned.

    The head layout is checked for every tensor here, before anything is read.
    """
    from medmerge.io.writer import TensorSpec
    from medmerge.merge.arch import attention_layout
    from medmerge.merge.plan import Step

    base_ref = recipe.base_model
    assert base_ref is not None   # the registry entry needs a base: a recipe without one is refused when parsed
    a_ref, b_ref = [m.model for m in recipe.models if m.model != base_ref]
    a = parents[a_ref]
    shapes = {name: tuple(a.info(name)[1]) for name in a.keys()}
    layout = attention_layout(a.config, shapes, method=recipe.merge_method)
    head_dim = layout.head_dim
    align = recipe.parameters.get("align", "per_projection")
    cast = getattr(torch, recipe.dtype) if recipe.dtype else None
    out_cast = getattr(torch, recipe.out_dtype) if recipe.out_dtype else None
    perms: dict[tuple, np.ndarray | dict[str, np.ndarray]] = {}

    def role_weight(load, ref: str, layer: str, role: str) -> torch.Tensor:
        name, part = layout.weights[layer][role]
        return load(ref, name)[part.start:part.stop]

    def perm_getter(layer: str, load):
        def perm_for(role: str):
            key = (layer, "all") if align == "per_layer" else (layer, role)
            if key not in perms:
                if any(k[0] != layer for k in perms):
                    perms.clear()  # keep only the current layer's permutations
                if align == "per_layer":
                    A = {_ROLE_KEY[r]: role_weight(load, a_ref, layer, r) for r in _ROLE_KEY}
                    B = {_ROLE_KEY[r]: role_weight(load, b_ref, layer, r) for r in _ROLE_KEY}
                    q_perm, kv_perm = layer_permutation(A, B, head_dim, layout.n_heads, layout.n_kv_heads)
                    perms[key] = {"q": q_perm, "o": q_perm, "k": kv_perm, "v": kv_perm}
                else:  # each projection (and its bias) aligned on its own weight
                    by_columns = role == "o"
                    perms[key] = align_heads(split_heads(role_weight(load, a_ref, layer, role), head_dim, by_columns),
                                             split_heads(role_weight(load, b_ref, layer, role), head_dim, by_columns))
            p = perms[key]
            return p[role] if isinstance(p, dict) else p
        return perm_for

    steps = []
    for name, shape in shapes.items():
        dt = a.info(name)[0]
        out_dtype = out_cast or cast or dt
        t = layout.tensors.get(name)
        reads = [(a_ref, name), (b_ref, name), (base_ref, name)]
        if t is not None and t.is_heads:
            roles = "qkvo" if align == "per_layer" else [p.role for p in t.parts if p.role]
            reads += [(r, layout.weights[t.layer][role][0]) for r in (a_ref, b_ref) for role in roles]

        def compute(load, name=name, t=t, out_dtype=out_dtype) -> torch.Tensor:
            ta, tb, t0 = (load(r, name) for r in (a_ref, b_ref, base_ref))
            if cast is not None:
                ta, tb, t0 = ta.to(cast), tb.to(cast), t0.to(cast)
            if not ta.is_floating_point():
                return ta
            if t is None:
                out = merge_tensor(ta, tb, t0)
            else:
                out = merge_structured(t, ta, tb, t0, head_dim, perm_getter(t.layer, load) if t.is_heads else None)
            return out.to(out_dtype)

        steps.append(Step(name=name, spec=TensorSpec(name, out_dtype, shape), reads=tuple(dict.fromkeys(reads)),
                          compute=compute))
    return steps
