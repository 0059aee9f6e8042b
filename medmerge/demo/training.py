"""Tiny-Llama construction, packing, training and held-out loss for the demo models.

Everything here is deterministic on a fixed thread count: the only randomness is the
seed given to :func:`new_model` (weight init) and the ``torch.Generator`` given to
:func:`train` (batch order); dropout is zero and the CPU kernels used are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Context length used for training and for scoring held-out text. Scoring in windows of
# the training length keeps RoPE positions inside what the models have seen.
BLOCK = 256


def llama_config(vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """The fixed demo architecture (GQA: 4 query heads share 2 key/value heads)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=bos_id, eos_token_id=eos_id,
        pad_token_id=pad_id, dtype="float32",
    )


def new_model(config, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` in float32, its init fixed by ``seed``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def encode_docs(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text as ``<s> ... </s>`` token ids (no trailing ``</s>`` if the text already ends in one)."""
    backend = tokenizer.backend_tokenizer  # bypasses the per-call max-length warning
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    out = []
    for enc in backend.encode_batch(list(texts), add_special_tokens=False):
        ids = [bos, *enc.ids]
        if ids[-1] != eos:
            ids.append(eos)
        out.append(ids)
    return out


def pack(docs: Sequence[Sequence[int]], block: int = BLOCK, keep_tail: bool = False) -> torch.Tensor:
    """Concatenate documents and cut into rows of ``block`` tokens.

    Training drops the short tail (``keep_tail=False``) so every row is full; scoring
    keeps it, right-padded with ``-100`` (masked out of the loss; callers replace it in
    ``input_ids``).
    """
    stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    n_full = len(stream) // block
    rows = stream[: n_full * block].view(n_full, block)
    tail = stream[n_full * block:]
    if keep_tail and len(tail) > 1:
        padded = torch.full((1, block), -100, dtype=torch.long)
        padded[0, : len(tail)] = tail
        rows = torch.cat([rows, padded])
    return rows


@dataclass(frozen=True)
class Phase:
    """One training phase: ``steps`` AdamW steps of ``batch`` packed rows at peak ``lr``."""

    name: str
    steps: int
    lr: float
    batch: int = 16
    warmup: int = 20


def lr_at(step: int, phase: Phase) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < phase.warmup:
        return phase.lr * (step + 1) / phase.warmup
    t = (step - phase.warmup) / max(1, phase.steps - phase.warmup)
    return phase.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def batch_order(n_rows: int, n_needed: int, gen: torch.Generator) -> torch.Tensor:
    """Row indices for ``n_needed`` samples: whole shuffled epochs, concatenated."""
    epochs = math.ceil(n_needed / n_rows)
    return torch.cat([torch.randperm(n_rows, generator=gen) for _ in range(epochs)])[:n_needed]


def train(model, rows: torch.Tensor, phase: Phase, gen: torch.Generator, quiet: bool = False) -> float:
    """Train ``model`` in place on packed ``rows``; return the mean loss of the last 10% of steps."""
    from tqdm.auto import tqdm

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=phase.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = batch_order(len(rows), phase.steps * phase.batch, gen)
    tail_losses = []
    bar = tqdm(range(phase.steps), desc=f"demo {phase.name}", disable=quiet, unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, phase)
        x = rows[order[step * phase.batch:(step + 1) * phase.batch]]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= phase.steps - max(1, phase.steps // 10):
            tail_losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return sum(tail_losses) / len(tail_losses)


@torch.no_grad()
def heldout_loss(model, tokenizer, texts: Sequence[str], block: int = BLOCK) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` on ``texts``.

    Texts are encoded and packed exactly as for training (``<s> text </s>``, windows of
    ``block`` tokens), so numbers are comparable across the demo models and phases.
    """
    model.eval()
    rows = pack(encode_docs(tokenizer, texts), block, keep_tail=True)
    labels = rows.clone()
    inputs = rows.masked_fill(rows == -100, tokenizer.pad_token_id)
    total, count = 0.0, 0
    for i in range(0, len(rows), 16):
        x, y = inputs[i:i + 16], labels[i:i + 16]
        logits = model(input_ids=x).logits[:, :-1].float()
        target = y[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
        total += nll.item()
        count += int((target != -100).sum())
    return total / count
