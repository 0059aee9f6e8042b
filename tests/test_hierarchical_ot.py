"""Hierarchical Cosine-OT-LERP: the weight formula, head alignment, and whole-model merges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factory import llama_config, llama_state_dict, read, write_checkpoint

from medmerge.merge.engine import merge
from medmerge.merge.methods import hierarchical_ot as hot
from medmerge.merge.recipe import parse_recipe

HD, NH, NKV = 8, 4, 2


def test_weight_is_clipped_cosine_of_task_vectors():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 8, generator=g)
    da, db = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    cos = float(torch.nn.functional.cosine_similarity(da.reshape(1, -1), db.reshape(1, -1)))
    assert hot.cosine_weight(base + da, base + db, base) == pytest.approx(max(0.0, cos), abs=1e-6)
    assert hot.cosine_weight(base + da, base + 0.5 * da, base) == pytest.approx(1.0)
    assert hot.cosine_weight(base + da, base - da, base) == 0.0  # cos = -1 is clipped


def clipped_cosine(da: torch.Tensor, db: torch.Tensor) -> float:
    """max(0, cos) of two task vectors, by hand: the dot product over the product of the norms."""
    da, db = da.double().reshape(-1), db.double().reshape(-1)
    return max(0.0, float((da * db).sum() / ((da * da).sum().sqrt() * (db * db).sum().sqrt())))


def test_zero_task_vector_gives_weight_zero_and_returns_a():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(8, 8, generator=g)
    a = base + torch.randn(8, 8, generator=g)
    assert hot.cosine_weight(a, base.clone(), base) == 0.0
    assert hot.cosine_weight(base.clone(), a, base) == 0.0
    assert torch.equal(hot.merge_tensor(a, base.clone(), base), a)


def test_merge_tensor_is_lerp_with_cosine_weight():
    g = torch.Generator().manual_seed(2)
    base, a, b = (torch.randn(6, 5, generator=g) for _ in range(3))
    w = clipped_cosine(a - base, b - base)
    assert 0 < w < 1 or w == 0
    assert torch.allclose(hot.merge_tensor(a, b, base), (1 - w) * a + w * b)


def test_b_equal_a_gives_a():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(NH * HD, 32, generator=g)
    a = base + 0.1 * torch.randn(NH * HD, 32, generator=g)
    out = hot.merge_projection(a, a.clone(), base, HD, by_columns=False)
    assert torch.allclose(out, a, atol=1e-7)


@pytest.mark.parametrize("by_columns", [False, True])
def test_permuted_heads_are_realigned(by_columns):
    g = torch.Generator().manual_seed(4)
    shape = (32, NH * HD) if by_columns else (NH * HD, 32)
    base = torch.randn(*shape, generator=g)
    a = base + 0.5 * torch.randn(*shape, generator=g)
    tau = np.array([2, 0, 3, 1])
    b = hot.permute_heads(a, tau, HD, by_columns)  # B head i = A head tau(i)
    assert not torch.allclose(b, a)
    pi = hot.align_heads(hot.split_heads(a, HD, by_columns), hot.split_heads(b, HD, by_columns))
    assert list(tau[pi]) == [0, 1, 2, 3]  # aligned B head i = B head pi(i) = A head i
    assert torch.allclose(hot.merge_projection(a, b, base, HD, by_columns), a, atol=1e-6)


def _permute_layer(sd: dict, layer: str, q_perm, kv_perm) -> dict:
    out = dict(sd)
    out[f"{layer}.q_proj.weight"] = hot.permute_heads(sd[f"{layer}.q_proj.weight"], q_perm, HD, False)
    out[f"{layer}.k_proj.weight"] = hot.permute_heads(sd[f"{layer}.k_proj.weight"], kv_perm, HD, False)
    out[f"{layer}.v_proj.weight"] = hot.permute_heads(sd[f"{layer}.v_proj.weight"], kv_perm, HD, False)
    out[f"{layer}.o_proj.weight"] = hot.permute_heads(sd[f"{layer}.o_proj.weight"], q_perm, HD, True)
    return out


def _logits(cfg: dict, sd: dict) -> torch.Tensor:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        return model(torch.arange(4, 20).reshape(1, -1)).logits


# B's kv head g moves to slot kv_perm[g]; query heads move with their group (G = 2)
SCRAMBLE_KV = np.array([1, 0])
SCRAMBLE_Q = np.array([3, 2, 0, 1])


def test_per_layer_alignment_keeps_b_function_and_recovers_a():
    cfg = llama_config()
    a = llama_state_dict(cfg, seed=10)
    layer = "model.layers.0.self_attn"
    b = _permute_layer(a, layer, SCRAMBLE_Q, SCRAMBLE_KV)
    # the scrambled model computes exactly what A computes: a group-consistent head permutation
    assert torch.allclose(_logits(cfg, a), _logits(cfg, b), atol=1e-5)
    A = {p: a[f"{layer}.{p}.weight"] for p in hot.ATTENTION_PROJECTIONS}
    B = {p: b[f"{layer}.{p}.weight"] for p in hot.ATTENTION_PROJECTIONS}
    q_perm, kv_perm = hot.layer_permutation(A, B, HD, NH, NKV)
    aligned = _permute_layer(b, layer, q_perm, kv_perm)
    for p in hot.ATTENTION_PROJECTIONS:
        assert torch.equal(aligned[f"{layer}.{p}.weight"], a[f"{layer}.{p}.weight"]), p
    # every query head keeps its kv group
    assert all(q_perm[i] // (NH // NKV) == kv_perm[i // (NH // NKV)] for i in range(NH))


def test_per_projection_alignment_can_break_grouping_per_layer_cannot():
    """Noise makes per-projection assignments disagree; per_layer keeps B's function regardless."""
    cfg = llama_config()
    a = llama_state_dict(cfg, seed=11)
    g = torch.Generator().manual_seed(12)
    b = {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in a.items()}  # 0.2 still aligns per group
    b = _permute_layer(b, "model.layers.1.self_attn", SCRAMBLE_Q, SCRAMBLE_KV)
    layer = "model.layers.1.self_attn"
    A = {p: a[f"{layer}.{p}.weight"] for p in hot.ATTENTION_PROJECTIONS}
    B = {p: b[f"{layer}.{p}.weight"] for p in hot.ATTENTION_PROJECTIONS}
    q_perm, kv_perm = hot.layer_permutation(A, B, HD, NH, NKV)
    aligned = _permute_layer(b, layer, q_perm, kv_perm)
    assert torch.allclose(_logits(cfg, b), _logits(cfg, aligned), atol=1e-5)
    # per_projection aligns q, k, v, o each on its own: here a query head lands away from its kv group,
    # so B's attention computes something else
    pp = {p: hot.align_heads(hot.split_heads(A[p], HD, p == "o_proj"), hot.split_heads(B[p], HD, p == "o_proj"))
          for p in hot.ATTENTION_PROJECTIONS}
    group = NH // NKV
    assert any(pp["q_proj"][i] // group != pp["k_proj"][i // group] for i in range(NH)), pp
    per_projection = dict(b)
    for p in hot.ATTENTION_PROJECTIONS:
        per_projection[f"{layer}.{p}.weight"] = hot.permute_heads(B[p], pp[p], HD, p == "o_proj")
    assert not torch.allclose(_logits(cfg, b), _logits(cfg, per_projection), atol=1e-3)


@pytest.mark.parametrize("align", ["per_projection", "per_layer"])
def test_whole_model_merge_of_a_with_its_scrambled_self_gives_a(tmp_path, align):
    cfg = llama_config()
    base = llama_state_dict(cfg, seed=20)
    g = torch.Generator().manual_seed(21)
    a = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    b = a
    for layer in ("model.layers.0.self_attn", "model.layers.1.self_attn"):
        b = _permute_layer(b, layer, SCRAMBLE_Q, SCRAMBLE_KV)
    paths = {n: write_checkpoint(tmp_path / n, sd, cfg) for n, sd in (("base", base), ("a", a), ("b", b))}
    recipe = parse_recipe({"merge_method": "hierarchical_ot", "base_model": str(paths["base"]),
                           "models": [{"model": str(paths["a"])}, {"model": str(paths["b"])}],
                           "parameters": {"align": align}})
    merged = read(merge(recipe, tmp_path / "out", quiet=True))
    for k, v in a.items():
        assert torch.allclose(merged[k], v, atol=1e-6), k


def test_whole_model_non_attention_tensors_follow_formula(tmp_path):
    cfg = llama_config()
    base = llama_state_dict(cfg, seed=30)
    g = torch.Generator().manual_seed(31)
    a = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    # B's task vector shares half of A's, so cos(ΔA, ΔB) ≈ 0.45: a weight strictly between 0 and 1
    # (independent noise gives cos ≈ 0, often clipped to exactly 0)
    b = {k: v + 0.5 * (a[k] - v) + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    paths = {n: write_checkpoint(tmp_path / n, sd, cfg) for n, sd in (("base", base), ("a", a), ("b", b))}
    recipe = parse_recipe({"merge_method": "hierarchical_ot", "base_model": str(paths["base"]),
                           "models": [{"model": str(paths["a"])}, {"model": str(paths["b"])}]})
    merged = read(merge(recipe, tmp_path / "out", quiet=True))
    k = "model.layers.0.mlp.up_proj.weight"
    w = clipped_cosine(a[k] - base[k], b[k] - base[k])
    assert 0 < w < 1
    assert torch.allclose(merged[k], (1 - w) * a[k] + w * b[k])


def test_a_native_method_is_one_registry_entry(tmp_path, monkeypatch):
    """The engine plans a native method through its registry entry's ``plan_steps`` alone: a new
    method needs no engine change (here a toy ``negate``: every tensor of the one model, negated)."""
    from factory import make_family

    from medmerge.io.writer import TensorSpec
    from medmerge.merge.plan import Step
    from medmerge.merge.methods import METHODS, MethodDef

    def plan_steps(recipe, parents):
        ref = recipe.models[0].model
        ckpt = parents[ref]
        return [Step(name=n, spec=TensorSpec(n, *ckpt.info(n)), reads=((ref, n),),
                     compute=lambda load, n=n: -load(ref, n)) for n in ckpt.keys()]

    monkeypatch.setitem(METHODS, "negate", MethodDef(
        name="negate", pretty_name="Negate", reference_url=None, params=(), needs_base=False, max_models=1,
        plan_steps=plan_steps))
    fam = make_family(tmp_path / "fam", n_children=1)
    merged = read(merge(parse_recipe({"merge_method": "negate", "models": [{"model": str(fam["m0"])}]}),
                        tmp_path / "out", quiet=True))
    assert METHODS["negate"].backend == "native" and METHODS["linear"].backend == "mergekit"
    child = read(fam["m0"])
    assert sorted(merged) == sorted(child)
    assert all(torch.equal(merged[k], -v) for k, v in child.items())


@pytest.mark.parametrize("family,head_dim,fused", [
    ("llama", 8, False), ("mistral", 8, False), ("qwen2", 8, False), ("qwen3", 16, False), ("gemma2", 16, False),
    ("phi3", 8, True)])
def test_attention_layout_is_read_from_the_table_and_config(family, head_dim, fused):
    import families as F

    from medmerge.merge.arch import attention_layout

    model = F.new_model(family, seed=0)
    cfg = model.config.to_dict()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layout = attention_layout(cfg, shapes)
    assert (layout.n_heads, layout.n_kv_heads, layout.head_dim) == (F.N_HEADS, F.N_KV, head_dim)
    assert sorted(layout.weights) == [f"model.layers.{i}" for i in range(F.LAYERS)]
    name, part = layout.weights["model.layers.1"]["k"]
    assert (part.stop - part.start) == F.N_KV * head_dim
    assert name.endswith("qkv_proj.weight" if fused else "k_proj.weight")
    # Qwen3's per-head norms are shared by every head: plain tensors, not aligned
    assert not any("norm" in n for n in layout.tensors)
