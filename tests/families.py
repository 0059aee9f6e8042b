"""Tiny random checkpoints of the six families users bring (Llama, Mistral, Qwen2, Qwen3, Gemma2,
Phi-3), built with transformers' own config and model classes and a small byte-level BPE tokenizer
trained locally (``medmerge.demo.tokenizer``), and a consistent head permutation of a checkpoint.

Each family keeps what makes it different: grouped-query attention everywhere (6 query heads in 2
groups of 3), Qwen2's q/k/v biases and tied embeddings, Qwen3's per-head q/k norms and an explicit
``head_dim`` (16, not hidden/heads = 8), Gemma2's explicit ``head_dim`` and tied embeddings, Phi-3's
fused ``qkv_proj`` and ``gate_up_proj``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3")
HIDDEN, N_HEADS, N_KV, LAYERS, INTER = 48, 6, 2, 2, 64
VOCAB = 300  # 256 byte symbols + 4 specials + 40 merges
BOS, EOS, PAD = 0, 1, 3  # medmerge.demo.tokenizer.SPECIAL_TOKENS order
EXPLICIT_HEAD_DIM = {"qwen3": 16, "gemma2": 16}
# variants of a family: Llama with attention_bias (q/k/v/o biases, as some Llama-derived models have)
VARIANTS = {"llama_bias": ("llama", {"attention_bias": True})}

# A realistic GQA permutation: kv heads swap, each query head moves with its kv head's group, and the
# query heads inside each group are shuffled too (group g of B holds A's group KV_PERM[g]).
KV_PERM = np.array([1, 0])
Q_PERM = np.array([5, 3, 4, 1, 2, 0])   # slot i gets A's query head Q_PERM[i]; Q_PERM[i] // 3 == KV_PERM[i // 3]


def head_dim(family: str) -> int:
    return EXPLICIT_HEAD_DIM.get(family, HIDDEN // N_HEADS)


def config(family: str):
    """The transformers config of the tiny ``family`` model."""
    import transformers as tf

    if family in VARIANTS:
        family, overrides = VARIANTS[family]
        return config(family).__class__(**{**config(family).to_dict(), **overrides})
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                  num_attention_heads=N_HEADS, num_key_value_heads=N_KV, max_position_embeddings=256,
                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=False)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if family == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if family == "qwen3":
        return tf.Qwen3Config(**common, head_dim=EXPLICIT_HEAD_DIM["qwen3"], tie_word_embeddings=False)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=EXPLICIT_HEAD_DIM["gemma2"], query_pre_attn_scalar=16,
                               sliding_window=64, tie_word_embeddings=True)
    if family == "phi3":
        return tf.Phi3Config(**common, tie_word_embeddings=False)
    raise ValueError(family)


def new_model(family: str, seed: int):
    """A random model of ``family``; norms get noise too, so every tensor carries a task vector."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config(family), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def tokenizer():
    """A byte-level BPE tokenizer of ``VOCAB`` tokens with the demo chat template, trained on the
    packaged demo corpus (deterministic, about a second)."""
    from medmerge.demo.corpus import load_corpus
    from medmerge.demo.tokenizer import train_tokenizer

    texts = [r["text"] for r in load_corpus("clinical", "train")][:200]
    tok = train_tokenizer(texts, vocab_size=VOCAB)
    assert len(tok) == VOCAB, len(tok)
    return tok


def save(model, d: Path, tok, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` (with ``state_dict`` loaded first, if given) as transformers writes it."""
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=False)  # tied lm_head may be absent from the dict
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return Path(d)


def state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rows(t: torch.Tensor, perm, hd: int) -> torch.Tensor:
    """Head blocks of ``hd`` rows (or elements of a bias) reordered: block i <- block perm[i]."""
    idx = torch.as_tensor(perm)
    return t.reshape(len(perm), hd, *t.shape[1:])[idx].reshape(t.shape)


def _cols(t: torch.Tensor, perm, hd: int) -> torch.Tensor:
    idx = torch.as_tensor(perm)
    return t.reshape(t.shape[0], len(perm), hd)[:, idx].reshape(t.shape)


def permute_heads(sd: dict[str, torch.Tensor], family: str, q_perm=Q_PERM, kv_perm=KV_PERM) -> dict[str, torch.Tensor]:
    """``sd`` with every layer's attention heads permuted consistently: the same function, other weights.

    Written out per family from the modelling code, independently of medmerge's architecture table.
    """
    hd = head_dim(family)
    out = dict(sd)
    for i in range(LAYERS):
        p = f"model.layers.{i}.self_attn."
        if family == "phi3":
            qkv = sd[p + "qkv_proj.weight"]
            nq, nkv = N_HEADS * hd, N_KV * hd
            q, k, v = qkv[:nq], qkv[nq:nq + nkv], qkv[nq + nkv:]
            out[p + "qkv_proj.weight"] = torch.cat([_rows(q, q_perm, hd), _rows(k, kv_perm, hd), _rows(v, kv_perm, hd)])
        else:
            for proj, perm in (("q_proj", q_perm), ("k_proj", kv_perm), ("v_proj", kv_perm)):
                for kind in ("weight", "bias"):
                    if p + f"{proj}.{kind}" in sd:
                        out[p + f"{proj}.{kind}"] = _rows(sd[p + f"{proj}.{kind}"], perm, hd)
        out[p + "o_proj.weight"] = _cols(sd[p + "o_proj.weight"], q_perm, hd)
        # Qwen3's q_norm/k_norm are one [head_dim] weight applied to every head alike: nothing to move
    return out


def logits(model, sd: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    if sd is not None:
        model.load_state_dict(sd, strict=False)
    with torch.no_grad():
        return model(torch.arange(4, 40).reshape(2, -1)).logits


def build(root: Path, family: str, tok, seed: int = 0) -> dict[str, Path]:
    """``{"base", "a", "b"}``: a base and two fine-tunes of it (base + independent noise)."""
    root = Path(root)
    model = new_model(family, seed)
    base = state_dict(model)
    g = torch.Generator().manual_seed(seed + 1)
    out = {"base": save(model, root / "base", tok, base)}
    for name in ("a", "b"):
        child = {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        out[name] = save(model, root / name, tok, child)
    return out
