"""Batched sampling from a causal LM, with the forgetting study's decoding defaults.

Defaults: batch 16, temperature 0.3, top-p 0.9, repetition penalty 1.2, inputs capped at 8192
tokens, up to 8192 new tokens. Prompts are built exactly as in SFT (:func:`medmerge.finetune.sft.prompt_for`:
the chat template when the tokenizer has one), so a fine-tuned model is asked the way it was taught.

Lengths, for a model with a context of ``C`` tokens:

- an input longer than ``min(max_input_tokens, C - template - min(max_new_tokens, C // 2))``
  keeps its *first* that many tokens, so every prompt leaves room for an answer; how many inputs
  were cut is returned, never silently hidden;
- each batch generates at most ``min(max_new_tokens, C - longest prompt of the batch)`` tokens;
  where that is below ``max_new_tokens`` the cap is logged (``medmerge.generation``) and returned.

A sequence stops at its EOS (the tokenizer's EOS and every EOS of the model's generation config,
e.g. Llama 3's ``<|eot_id|>``), and a batch stops when all its sequences have, so a large
``max_new_tokens`` costs nothing on short notes. Batches are left-padded; sampling is seeded once
per call (``torch.manual_seed(seed)``), so the same model, inputs and settings give the same text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medmerge.generation.data import GenerationExample
from medmerge.merge.precision import DType, normalise

log = logging.getLogger("medmerge.generation")


class GenerationSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(0.3, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.2, gt=0.0)
    max_input_tokens: int = Field(8192, ge=1)
    max_new_tokens: int = Field(8192, ge=1)   # the forgetting study's; capped per batch to what the context leaves
    dtype: DType = "auto"                      # the model's dtype where medmerge loads it (precision.py)
    seed: int = 0

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v):
        return normalise(v)


class Generations(BaseModel):
    ids: list[str]
    predictions: list[str]
    truncated_inputs: int
    seconds: float
    max_new_tokens: list[int] = Field(default_factory=list)   # per batch, after the context cap
    new_tokens: int = 0           # tokens generated, up to and including each sequence's EOS
    steps: int = 0                # decoding steps run, summed over batches (the work done)


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and the model's generation-config EOS ids (chat models end turns with their own)."""
    ids: list[int] = []
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in (tokenizer.eos_token_id, gen):
        for i in (v if isinstance(v, (list, tuple)) else [v]):
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def generate(model, tokenizer, examples: Sequence[GenerationExample], settings: GenerationSettings = GenerationSettings(),
             instruction: str | None = None, progress: bool = True) -> Generations:
    """Sample one completion per example; returns the texts in input order."""
    import torch
    from tqdm.auto import tqdm

    from medmerge.finetune.sft import DEFAULT_INSTRUCTION, prompt_for
    from medmerge.merge.arch import context_length

    t0 = time.perf_counter()
    instruction = instruction or DEFAULT_INSTRUCTION
    cap = settings.max_input_tokens
    ctx = context_length(getattr(model, "config", None), tokenizer)   # as the data check counted it
    if ctx:
        # room for the prompt template (instruction and markers) and the answer
        template = len(tokenizer(prompt_for(GenerationExample(id="", input="", target=""), tokenizer, instruction),
                                 add_special_tokens=True)["input_ids"])
        cap = min(cap, ctx - min(settings.max_new_tokens, ctx // 2) - template)
        if cap < 1:
            raise ValueError(f"the prompt template ({template} tokens) leaves no room for the input in the "
                             f"model's context of {ctx} tokens")
    truncated = 0
    prompts = []
    for ex in examples:
        ids = tokenizer(ex.input, add_special_tokens=False)["input_ids"]
        text = ex.input
        if len(ids) > cap:
            truncated += 1
            text = tokenizer.decode(ids[:cap], skip_special_tokens=True)
        prompts.append(prompt_for(ex.model_copy(update={"input": text}), tokenizer, instruction))

    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    torch.manual_seed(settings.seed)
    sample = settings.temperature > 0
    out: list[str] = []
    eos = eos_token_ids(model, tokenizer)
    caps: list[int] = []
    new_tokens = steps = 0
    try:
        batches = range(0, len(prompts), settings.batch_size)
        for i in tqdm(batches, desc="generating", unit="batch", disable=not progress or len(batches) < 2):
            chunk = prompts[i:i + settings.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)  # special tokens as TRL adds them in SFT
            enc = {k: v.to(device) for k, v in enc.items()}
            longest = enc["input_ids"].shape[1]
            room = settings.max_new_tokens if not ctx else min(settings.max_new_tokens, ctx - longest)
            caps.append(room)
            if room < settings.max_new_tokens:
                log.info("generation batch %d: max_new_tokens %d capped to %d (context %d - longest prompt %d)",
                         i // settings.batch_size, settings.max_new_tokens, room, ctx, longest)
            kwargs = dict(max_new_tokens=room, repetition_penalty=settings.repetition_penalty,
                          do_sample=sample, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            if sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            with torch.inference_mode():
                gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            steps += new.shape[1]
            new_tokens += _lengths_to_eos(new, eos)
            out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
        model.train(was_training)
    if caps and min(caps) < settings.max_new_tokens:
        log.warning("max_new_tokens %d capped to %d-%d by the model's context of %d tokens",
                    settings.max_new_tokens, min(caps), max(caps), ctx)
    return Generations(ids=[e.id for e in examples], predictions=out, truncated_inputs=truncated,
                       seconds=time.perf_counter() - t0, max_new_tokens=caps, new_tokens=new_tokens, steps=steps)


def _lengths_to_eos(new, eos: list[int]) -> int:
    """Generated tokens per row up to and including its first EOS (or the whole row), summed."""
    import torch

    if not eos:
        return int(new.numel())
    hit = torch.isin(new, torch.tensor(eos, device=new.device))
    first = torch.where(hit.any(1), hit.int().argmax(1) + 1, torch.full_like(hit[:, 0], new.shape[1], dtype=torch.long))
    return int(first.sum())
