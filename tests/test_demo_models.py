"""The embedded demo models: loadable offline, one tokenizer, distinct and reproducible weights,
and children that are each better on their own held-out domain."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medmerge.demo import MODEL_NAMES, build_demo_models, domain_texts, heldout_loss, load_corpus
from medmerge.demo.corpus import CORPORA, as_messages
from medmerge.io.atomic import TMP_PREFIX

# Second tier: the fast tier's end-to-end tests use the models; these check how they were built.
pytestmark = pytest.mark.integration

MODEL_FILES = {"model.safetensors", "config.json", "generation_config.json"}
# Minimum gap (nats/token) for "clearly lower" held-out loss; measured gaps are >1.5.
MARGIN = 0.5


def tokenizer_files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file() and p.name not in MODEL_FILES}


def load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


@pytest.fixture(scope="module")
def losses(demo_models) -> dict[str, dict[str, float]]:
    """Held-out loss per corpus and model: ``{corpus: {model: nats/token}}``."""
    loaded = {name: load(p) for name, p in demo_models.items()}
    tok = loaded["base"][1]
    return {c: {name: heldout_loss(m, tok, domain_texts(tok, c, "heldout")) for name, (m, _) in loaded.items()}
            for c in CORPORA}


def test_layout_and_no_leftovers(demo_models):
    assert set(demo_models) == set(MODEL_NAMES)
    parent = demo_models["base"].parent
    for name, path in demo_models.items():
        assert path == parent / name
        assert MODEL_FILES <= {p.name for p in path.iterdir()}
    assert not list(parent.glob(TMP_PREFIX + "*")), "atomic_dir left a temporary directory behind"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loads_offline_as_tiny_gqa_llama(demo_models, name):
    from transformers import LlamaForCausalLM

    model, tok = load(demo_models[name])
    assert isinstance(model, LlamaForCausalLM)
    c = model.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (64, 176, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 2, 16)
    assert c.max_position_embeddings == 512 and c.tie_word_embeddings is False and c.rms_norm_eps == 1e-5
    assert c.vocab_size == len(tok)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert {t: getattr(tok, f"{t}_token") for t in ("bos", "eos", "unk", "pad")} == {
        "bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
    enc = tok("Doctor: How are you?", return_tensors="pt")
    n = enc["input_ids"].shape[1]
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    new = out[0, n:]
    assert torch.equal(out[0, :n], enc["input_ids"][0]) and 1 <= len(new) <= 5
    with torch.no_grad():  # greedy: each new token is the model's most likely one after what precedes it
        assert torch.equal(model(out[:, :-1]).logits[0, n - 1:].argmax(-1), new)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    assert len(new) == 5 or new[-1].item() in eos   # it stopped early only on an end token
    assert not set(new[:-1].tolist()) & eos          # and never ran past one


def test_tokenizer_files_byte_identical(demo_models):
    files = {name: tokenizer_files(p) for name, p in demo_models.items()}
    assert "tokenizer.json" in files["base"]
    assert files["clinical"] == files["base"] and files["instruct"] == files["base"]


def test_chat_template(demo_models):
    _, tok = load(demo_models["instruct"])
    user = [{"role": "user", "content": "Say hi."}]
    full = user + [{"role": "assistant", "content": "Hi."}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert prompt == "### Instruction:\nSay hi.\n### Response:\n"
    assert tok.apply_chat_template(full, tokenize=False) == prompt + "Hi.</s>"
    # The corpus stores each pair pre-rendered; it must match what the template produces.
    for record in load_corpus("instruct")[:50]:
        assert tok.apply_chat_template(as_messages(record), tokenize=False) == record["text"]


def test_corpus_splits_are_disjoint():
    for name in CORPORA:
        train, held = load_corpus(name, "train"), load_corpus(name, "heldout")
        assert len(held) >= 10 and len(train) > 5 * len(held)
        assert not {r["id"] for r in train} & {r["id"] for r in held}
        assert not {r["text"] for r in train} & {r["text"] for r in held}
    # HellaSwag items feed both general and instruct text; they must not overlap.
    assert not {r["id"] for r in load_corpus("general")} & {r["id"] for r in load_corpus("instruct")}


def test_weights_differ_between_models(demo_models):
    sds = {name: load_file(str(p / "model.safetensors")) for name, p in demo_models.items()}
    assert sds["base"].keys() == sds["clinical"].keys() == sds["instruct"].keys()
    for a, b in itertools.combinations(MODEL_NAMES, 2):
        same = [k for k in sds[a] if torch.equal(sds[a][k], sds[b][k])]
        assert not same, f"{a} and {b} share tensors {same}"


def test_children_win_on_their_own_heldout_domain(losses):
    clinical, instruct = losses["clinical"], losses["instruct"]
    assert clinical["clinical"] < clinical["instruct"] - MARGIN, clinical
    assert instruct["instruct"] < instruct["clinical"] - MARGIN, instruct
    # Continued training helps where it was aimed, relative to the shared parent.
    assert clinical["clinical"] < clinical["base"] - MARGIN, clinical
    assert instruct["instruct"] < instruct["base"] - MARGIN, instruct
    # Base saw only general text, so it is the best of the three there.
    assert losses["general"]["base"] == min(losses["general"].values()), losses["general"]


@pytest.mark.timeout(1800)   # a fresh build: about 30 s on a quiet 2-core machine, 15 min at load 10
def test_same_seed_gives_bit_identical_models(demo_models, tmp_path):
    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    again = build_demo_models(tmp_path / "again", seed=0, quiet=True)
    assert torch.get_num_threads() == threads, "build must restore the caller's thread count"
    assert torch.equal(torch.random.get_rng_state(), rng), "build must not disturb the global RNG"
    for name in MODEL_NAMES:
        for f in ("model.safetensors", "config.json", "tokenizer.json"):
            assert (again[name] / f).read_bytes() == (demo_models[name] / f).read_bytes(), (name, f)
