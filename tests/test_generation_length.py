"""Generation length: up to 8192 new tokens by default, capped per batch by what the context leaves (and the
cap logged), and no decoding step past the EOS of every sequence of a batch."""

from __future__ import annotations

import logging

import torch
from factory import WORDS, llama_config, llama_state_dict, write_checkpoint

from medmerge.finetune.sft import DEFAULT_INSTRUCTION, prompt_for
from medmerge.generation.data import GenerationExample
from medmerge.generation.generate import GenerationSettings, eos_token_ids, generate

GREEDY = GenerationSettings(temperature=0.0, batch_size=4)


def tiny(tmp_path, ctx: int = 64):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = llama_config(max_position_embeddings=ctx)
    d = write_checkpoint(tmp_path / "m", llama_state_dict(c, seed=3), c)
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), AutoTokenizer.from_pretrained(d)


def examples(n: int) -> list[GenerationExample]:
    words = [w for w in WORDS if w.startswith("w")]
    return [GenerationExample(id=f"e{i}", input=" ".join(words[i:i + 3 + i]), target="x") for i in range(n)]


def count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_every_sequence_stops_at_eos_and_the_batch_with_it(tmp_path):
    model, tok = tiny(tmp_path)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit 0: greedy decoding emits token 0 at every step
    model.generation_config.eos_token_id = 0  # ... which the model's generation config calls its EOS
    assert eos_token_ids(model, tok) == [tok.eos_token_id, 0]  # the tokenizer's </s> and the model's own
    calls = count_forwards(model)
    g = generate(model, tok, examples(6), GREEDY, progress=False)
    assert GREEDY.max_new_tokens == 8192
    assert g.steps == 2 and g.new_tokens == 6  # one token per sequence, in two batches: nothing past EOS
    assert calls[0] == 2  # one forward pass per batch (the prompt); no decoding step after the EOS
    assert g.predictions == [""] * 6


def test_each_batch_is_capped_to_what_the_context_leaves(tmp_path, caplog):
    model, tok = tiny(tmp_path, ctx=64)
    exs = examples(5)
    prompts = [prompt_for(e, tok, DEFAULT_INSTRUCTION) for e in exs]
    tok.padding_side = "left"
    widths = [tok(prompts[i:i + 4], padding=True, return_tensors="pt")["input_ids"].shape[1] for i in (0, 4)]
    with caplog.at_level(logging.INFO, logger="medmerge.generation"):
        g = generate(model, tok, exs, GREEDY, progress=False)
    assert g.max_new_tokens == [64 - w for w in widths]  # min(8192, context - longest prompt of the batch)
    assert "max_new_tokens 8192 capped to" in caplog.text
    assert g.steps <= sum(g.max_new_tokens)


def test_a_long_input_keeps_room_for_the_answer(tmp_path):
    model, tok = tiny(tmp_path, ctx=64)
    long = GenerationExample(id="long", input=" ".join(f"w{i % 60}" for i in range(300)), target="x")
    g = generate(model, tok, [long], GREEDY, progress=False)
    assert g.truncated_inputs == 1
    assert g.max_new_tokens[0] >= 32  # the input was cut to leave min(max_new_tokens, context / 2) tokens
