"""Three tiny, genuinely trained Llama checkpoints for demos and tests, built offline in seconds.

``base`` learns general English (HellaSwag text) from scratch; ``clinical`` and
``instruct`` continue from ``base`` on clinical text (MTS-Dialog, PubMedQA) and on
instruction/response pairs respectively. They share one tokenizer and one architecture,
so they form a small but real merge family: each child is measurably better than the
other on its own held-out domain. The text ships inside the package
(``medmerge/resources/demo/corpus``, see ``LICENSES.md`` there).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from medmerge.demo.corpus import CORPORA, as_messages, load_corpus
from medmerge.demo.tokenizer import CHAT_TEMPLATE, train_tokenizer
from medmerge.demo.training import Phase, encode_docs, heldout_loss, llama_config, new_model, pack, train

__all__ = [
    "MODEL_NAMES", "PHASES", "CHAT_TEMPLATE", "CORPORA", "build_demo_models", "domain_texts",
    "heldout_loss", "load_corpus",
]

MODEL_NAMES = ("base", "clinical", "instruct")

# Sized so the build takes ~30 s on two CPU cores. Base stops near its best held-out
# loss (the general corpus is ~40k tokens; longer training only memorises it); the
# children get enough steps to separate by >1 nat/token on their own held-out domains.
PHASES = {
    "base": Phase("base", steps=160, lr=3e-3),
    "clinical": Phase("clinical", steps=90, lr=1.5e-3),
    "instruct": Phase("instruct", steps=90, lr=1.5e-3),
}
# Which corpus each model is trained on (children start from base).
TRAIN_CORPUS = {"base": "general", "clinical": "clinical", "instruct": "instruct"}


def domain_texts(tokenizer, corpus: str, split: str) -> list[str]:
    """Texts of ``corpus``/``split`` as the models see them.

    ``instruct`` records are rendered with the tokenizer's chat template (user turn,
    then assistant turn ending in ``</s>``); the other corpora are used as plain text.
    """
    records = load_corpus(corpus, split)
    if corpus == "instruct":
        return [tokenizer.apply_chat_template(as_messages(r), tokenize=False) for r in records]
    return [r["text"] for r in records]


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    # A fixed thread count keeps CPU reductions in the same order, hence bit-identical
    # weights from run to run; the caller's setting is restored afterwards.
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def _no_transformers_bars() -> Iterator[None]:
    # save_pretrained draws a "Writing model shards" bar for a sub-second write; the
    # per-phase training bars are the only progress worth showing.
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _save(model, tokenizer, path: Path) -> Path:
    from medmerge.io.atomic import atomic_dir

    with atomic_dir(path, overwrite=True) as tmp, _no_transformers_bars():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path


def build_demo_models(out_dir: str | Path, *, seed: int = 0, quiet: bool = False) -> dict[str, Path]:
    """Build three tiny Llama checkpoints base/clinical/instruct under out_dir; return {name: path}.

    Contract:

    * ``out_dir/base``, ``out_dir/clinical``, ``out_dir/instruct`` each hold a float32
      ``LlamaForCausalLM`` (``model.safetensors``, ``config.json``,
      ``generation_config.json``) and byte-identical tokenizer files (one tokenizer,
      trained once on the training splits of all three corpora, saved three times).
    * ``clinical`` has lower loss than ``instruct`` on held-out clinical text, and
      ``instruct`` lower loss than ``clinical`` on held-out instruction-formatted text.
    * Offline: reads only the corpus shipped in the package.
    * Deterministic: the same ``seed`` gives bit-identical weights (on the same torch
      build and CPU; the build runs with ``torch.set_num_threads(2)`` and restores the
      previous setting afterwards).
    * Always rebuilds: existing ``base``/``clinical``/``instruct`` directories are replaced
      (other entries in ``out_dir`` are untouched). All three models are trained before
      any is written (a failed training phase replaces nothing), and each is written
      atomically (``medmerge.io.atomic.atomic_dir``), so an interrupted build never leaves
      a half-written checkpoint at a final path.
    * Leaves the caller's torch thread count and global RNG state as they were.
    * Shows one tqdm progress bar per training phase unless ``quiet``.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    # fork_rng: seeding for the build must not change the caller's global RNG stream.
    with _torch_threads(2), torch.random.fork_rng(devices=[]):
        tokenizer = train_tokenizer(t for c in CORPORA for t in _tokenizer_texts(c))
        config = llama_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                              tokenizer.pad_token_id)
        rows = {name: pack(encode_docs(tokenizer, domain_texts(tokenizer, TRAIN_CORPUS[name], "train")))
                for name in MODEL_NAMES}
        models = {"base": new_model(config, seed)}
        _train_phase(models["base"], rows["base"], "base", seed, quiet)
        for offset, name in enumerate(MODEL_NAMES[1:], start=1):
            models[name] = copy.deepcopy(models["base"])
            _train_phase(models[name], rows[name], name, seed + offset, quiet)
        # Save only once all three are trained, so a failure in training replaces nothing
        # and out_dir does not end up mixing models from two builds.
        paths = {name: _save(model, tokenizer, out_dir / name) for name, model in models.items()}
    if not quiet:
        print(f"demo models written to {out_dir} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return paths


def _tokenizer_texts(corpus: str) -> list[str]:
    # Raw record text: for instruct it is already in chat format (checked by the tests),
    # so the tokenizer sees the "### Instruction:" markers it will have to encode.
    return [r["text"] for r in load_corpus(corpus, "train")]


def _train_phase(model, rows: torch.Tensor, name: str, seed: int, quiet: bool) -> float:
    gen = torch.Generator().manual_seed(seed)
    return train(model, rows, PHASES[name], gen, quiet=quiet)
