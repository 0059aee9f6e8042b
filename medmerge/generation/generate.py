"""Batched sampling from a causal LM, with the first seed's decoding defaults.

Defaults: batch 16, temperature 0.3, top-p 0.9, repetition penalty 1.2, inputs capped at 8192
tokens. Prompts are built exactly as in SFT (:func:`medmerge.sft.prompt_for`: the chat
template when the tokenizer has one), so a fine-tuned model is asked the way it was taught.

An input longer than the cap keeps its *first* ``max_input_tokens`` tokens (the cap is also
lowered to fit ``max_new_tokens`` in the model's context); how many inputs were cut is
returned, never silently hidden. Batches are left-padded; sampling is seeded once per call
(``torch.manual_seed(seed)``), so the same model, inputs and settings give the same text.
"""

from __future__ import annotations

import time
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from medmerge.generation.data import GenerationExample


class GenerationSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    batch_size: int = Field(16, ge=1)
    temperature: float = Field(0.3, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.2, gt=0.0)
    max_input_tokens: int = Field(8192, ge=1)
    max_new_tokens: int = Field(512, ge=1)
    seed: int = 0


class Generations(BaseModel):
    ids: list[str]
    predictions: list[str]
    truncated_inputs: int
    seconds: float


def _context_length(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def generate(model, tokenizer, examples: Sequence[GenerationExample], settings: GenerationSettings = GenerationSettings(),
             instruction: str | None = None, progress: bool = True) -> Generations:
    """Sample one completion per example; returns the texts in input order."""
    import torch
    from tqdm.auto import tqdm

    from medmerge.sft import DEFAULT_INSTRUCTION, prompt_for

    t0 = time.perf_counter()
    instruction = instruction or DEFAULT_INSTRUCTION
    cap = settings.max_input_tokens
    ctx = _context_length(model)
    if ctx:
        # room for the prompt template (instruction and markers) and the answer
        template = len(tokenizer(prompt_for(GenerationExample(id="", input="", target=""), tokenizer, instruction),
                                 add_special_tokens=True)["input_ids"])
        cap = min(cap, ctx - settings.max_new_tokens - template)
        if cap < 1:
            raise ValueError(f"max_new_tokens={settings.max_new_tokens} leaves no room for the input in the "
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
    try:
        batches = range(0, len(prompts), settings.batch_size)
        for i in tqdm(batches, desc="generating", unit="batch", disable=not progress or len(batches) < 2):
            chunk = prompts[i:i + settings.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True)  # special tokens as TRL adds them in SFT
            enc = {k: v.to(device) for k, v in enc.items()}
            kwargs = dict(max_new_tokens=settings.max_new_tokens, repetition_penalty=settings.repetition_penalty,
                          do_sample=sample, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            if sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            with torch.inference_mode():
                gen = model.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
        model.train(was_training)
    return Generations(ids=[e.id for e in examples], predictions=out, truncated_inputs=truncated,
                       seconds=time.perf_counter() - t0)
