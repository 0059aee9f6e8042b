"""The demo models' shared tokenizer: byte-level BPE trained locally, with a chat template."""

from __future__ import annotations

from collections.abc import Iterable

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = [BOS, EOS, UNK, PAD]  # ids 0..3, in this order
VOCAB_SIZE = 2000

# Alpaca-style turns. The "### Response:\n" header follows a user turn when an assistant
# turn comes next, or at the end when add_generation_prompt is set, so a prompt rendered
# with add_generation_prompt=True is an exact prefix of the rendered full conversation.
# A system message, if any, is rendered as a plain preamble line.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ message['content'] + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n' }}"
    "{%- if (loop.last and add_generation_prompt) or "
    "(not loop.last and messages[loop.index0 + 1]['role'] == 'assistant') -%}"
    "{{ '### Response:\\n' }}"
    "{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ message['content'] + eos_token }}"
    "{%- else -%}"
    "{{ raise_exception('unsupported chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Deterministic for the same texts in the same order. The result adds no special tokens
    by itself (callers put ``<s>``/``</s>`` where they want them), has ``bos``/``eos``/
    ``unk``/``pad`` set and carries :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=512, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
