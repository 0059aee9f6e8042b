"""The six families users bring (Llama, Mistral, Qwen2, Qwen3, Gemma2, Phi-3) as tiny random
checkpoints: ``medmerge merge`` equals mergekit bit for bit, hierarchical_ot gives A back from a
head-permuted copy of A, an unknown architecture or attention tensor is refused by name, and
evaluation, SFT and generation run on each."""

from __future__ import annotations

import json

import families as F
import pytest
import torch
import yaml
from factory import PACKAGED_SAMPLE, read
from mk import mergekit_merge
from safetensors.torch import save_file

from medmerge.cli import main


@pytest.fixture(scope="module")
def tok():
    return F.tokenizer()


@pytest.fixture(scope="module")
def fams(tmp_path_factory, tok):
    return {f: F.build(tmp_path_factory.mktemp(f), f, tok) for f in F.FAMILIES}


def cli_merge(tmp_path, recipe: dict, out_name="out") -> int:
    cfg = tmp_path / f"{out_name}.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    return main(["merge", str(cfg), str(tmp_path / out_name), "-q"])


def recipe(method: str, paths: dict) -> dict:
    if method == "linear":
        return {"merge_method": "linear", "dtype": "float32",
                "models": [{"model": str(paths["a"]), "parameters": {"weight": 0.3}},
                           {"model": str(paths["b"]), "parameters": {"weight": 0.7}}]}
    if method == "ties":
        return {"merge_method": "ties", "base_model": str(paths["base"]), "dtype": "float32",
                "parameters": {"normalize": True},
                "models": [{"model": str(paths["a"]), "parameters": {"weight": 0.6, "density": 0.5}},
                           {"model": str(paths["b"]), "parameters": {"weight": 0.4, "density": 0.7}}]}
    raise ValueError(method)


# -- merge equals mergekit ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["linear", "ties"])
@pytest.mark.parametrize("family", F.FAMILIES)
def test_merge_is_bit_identical_to_mergekit(fams, tmp_path, family, method):
    data = recipe(method, fams[family])
    assert cli_merge(tmp_path, data) == 0
    mine = read(tmp_path / "out")
    theirs = read(mergekit_merge(data, tmp_path / "theirs"))
    assert sorted(mine) == sorted(theirs)
    for k in mine:
        assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), k


# -- hierarchical_ot is exact on a head-permuted copy -------------------------------------------------
@pytest.mark.parametrize("align", ["per_layer", "per_projection"])
@pytest.mark.parametrize("family", F.FAMILIES + tuple(F.VARIANTS))
def test_hierarchical_ot_gives_a_back_from_its_head_permuted_copy(tok, tmp_path, family, align):
    from transformers import AutoModelForCausalLM

    model = F.new_model(family, seed=3)
    base = F.state_dict(model)
    g = torch.Generator().manual_seed(4)
    a = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    b = F.permute_heads(a, family)
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    assert any(".bias" in k for k in moved) == (family in ("qwen2", "llama_bias"))
    assert any("qkv_proj" in k for k in moved) == (family == "phi3")
    a_logits = F.logits(model, a)
    # the permuted copy computes what A computes: same function, other weights
    assert (F.logits(model, b) - a_logits).abs().max() <= 1e-5
    paths = {n: F.save(model, tmp_path / n, tok, sd) for n, sd in (("base", base), ("a", a), ("b", b))}
    code = cli_merge(tmp_path, {"merge_method": "hierarchical_ot", "base_model": str(paths["base"]),
                                "models": [{"model": str(paths["a"])}, {"model": str(paths["b"])}],
                                "parameters": {"align": align}})
    assert code == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert (F.logits(merged) - a_logits).abs().max() <= 1e-5
    # and the unaligned merge really would differ: alignment did the work
    w_b = {k: (v + b[k]) / 2 for k, v in a.items()}
    assert (F.logits(model, w_b) - a_logits).abs().max() > 1e-3


def test_phi3_fused_tensors_merge_as_the_unfused_llama_would(tok, tmp_path):
    """qkv_proj is split into q, k, v (and gate_up_proj into gate, up), each merged with its own
    cosine weight and head alignment as Llama's separate tensors are, then rejoined."""
    model = F.new_model("phi3", seed=5)
    base = F.state_dict(model)
    g = torch.Generator().manual_seed(6)
    a = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}
    b = F.permute_heads({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in base.items()}, "phi3")
    nq, nkv = F.N_HEADS * F.head_dim("phi3"), F.N_KV * F.head_dim("phi3")

    def unfuse(sd):
        out = {}
        for k, v in sd.items():
            if k.endswith("qkv_proj.weight"):
                p = k[: -len("qkv_proj.weight")]
                out[p + "q_proj.weight"], out[p + "k_proj.weight"], out[p + "v_proj.weight"] = v.split([nq, nkv, nkv])
            elif k.endswith("gate_up_proj.weight"):
                p = k[: -len("gate_up_proj.weight")]
                out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = v.split([F.INTER, F.INTER])
            else:
                out[k] = v
        return {k: v.contiguous() for k, v in out.items()}

    phi = {n: F.save(model, tmp_path / f"phi-{n}", tok, sd) for n, sd in (("base", base), ("a", a), ("b", b))}
    llama_cfg = {**json.loads((phi["a"] / "config.json").read_text()), "architectures": ["LlamaForCausalLM"],
                 "model_type": "llama"}
    llama = {}
    for n, sd in (("base", base), ("a", a), ("b", b)):
        d = tmp_path / f"llama-{n}"
        d.mkdir()
        save_file(unfuse(sd), str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(llama_cfg))
        tok.save_pretrained(d)
        llama[n] = d
    for fam, paths in (("phi", phi), ("llama", llama)):
        assert cli_merge(tmp_path, {"merge_method": "hierarchical_ot", "base_model": str(paths["base"]),
                                    "models": [{"model": str(paths["a"])}, {"model": str(paths["b"])}],
                                    "parameters": {"align": "per_layer"}}, out_name=fam) == 0
    fused, plain = unfuse(read(tmp_path / "phi")), read(tmp_path / "llama")
    assert sorted(fused) == sorted(plain)
    for k in plain:
        assert torch.allclose(fused[k], plain[k], atol=1e-7), k


# -- refused: an architecture or tensor layout the table does not know -----------------------------
def _three(tmp_path, tok, family, edit_sd=None, edit_cfg=None) -> dict:
    model = F.new_model(family, seed=7)
    base = F.state_dict(model)
    g = torch.Generator().manual_seed(8)
    paths = {}
    for n in ("base", "a", "b"):
        sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        d = F.save(model, tmp_path / n, tok, sd)
        if edit_sd:
            sd = edit_sd(read(d))
            (d / "model.safetensors").unlink()
            save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        if edit_cfg:
            cfg = json.loads((d / "config.json").read_text())
            (d / "config.json").write_text(json.dumps(edit_cfg(cfg)))
        paths[n] = d
    return paths


def _hot(paths) -> dict:
    return {"merge_method": "hierarchical_ot", "base_model": str(paths["base"]),
            "models": [{"model": str(paths["a"])}, {"model": str(paths["b"])}], "parameters": {"align": "per_layer"}}


def _gpt2(tmp_path, tok) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=F.VOCAB, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    return {n: F.save(model, tmp_path / n, tok) for n in ("base", "a", "b")}


@pytest.mark.parametrize("case,expected", [
    ("unknown architecture", ["GPT2LMHeadModel", "transformer.h.0.attn.c_attn.weight"]),
    ("unknown attention tensor", ["LlamaForCausalLM", "model.layers.0.self_attn.sinks"]),
    ("shape against config", ["LlamaForCausalLM", "model.layers.0.self_attn.k_proj.weight", "expected 24 rows"]),
    ("fused shape against config", ["Phi3ForCausalLM", "model.layers.0.self_attn.qkv_proj.weight"]),
])
def test_unknown_layout_exits_2_naming_architecture_and_tensor(tok, tmp_path, capsys, case, expected):
    if case == "unknown architecture":
        paths = _gpt2(tmp_path, tok)
    elif case == "unknown attention tensor":  # e.g. gpt-oss style attention sinks the table does not know
        paths = _three(tmp_path, tok, "llama",
                       edit_sd=lambda sd: {**sd, "model.layers.0.self_attn.sinks": torch.zeros(F.N_HEADS)})
    elif case == "shape against config":  # config.json claims 3 kv heads, the tensors hold 2
        paths = _three(tmp_path, tok, "llama", edit_cfg=lambda c: {**c, "num_key_value_heads": 3})
    else:
        paths = _three(tmp_path, tok, "phi3", edit_cfg=lambda c: {**c, "num_key_value_heads": 3})
    capsys.readouterr()
    code = cli_merge(tmp_path, _hot(paths))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in expected:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".medmerge-tmp-*"))


# -- evaluate, SFT and generation run on every family ---------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("family", F.FAMILIES)
def test_evaluate_sft_and_generate_run(fams, tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medmerge.finetune.sft import SFTSettings, finetune
    from medmerge.generation.data import load_task
    from medmerge.generation.generate import GenerationSettings, generate

    path = fams[family]["a"]
    report = tmp_path / "r.json"
    assert main(["evaluate", str(path), "--suite", "clinical", "--data-dir", str(PACKAGED_SAMPLE), "--limit", "2",
                 "--out", str(report), "--no-cache"]) == 0
    r = json.loads(report.read_text())
    assert len(r["tasks"]) == 10 and 0 <= r["scores"]["medical_avg"]["value"] <= 1

    examples = load_task("mts_dialog", "train", data_dir=PACKAGED_SAMPLE)[:4]
    out = finetune(path, examples, tmp_path / "sft", SFTSettings(learning_rate=1e-3, max_length=256,
                                                                 per_device_batch=2, grad_accum=1,
                                                                 gradient_checkpointing=False), max_steps=3)
    assert out.steps == 3 and all(torch.isfinite(torch.tensor(out.losses)))
    before, after = read(path), read(tmp_path / "sft")
    assert sorted(before) == sorted(after) and any(not torch.equal(before[k], after[k]) for k in before)

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft")
    gens = generate(model, tokenizer, examples[:3], GenerationSettings(max_new_tokens=8, batch_size=2,
                                                                      max_input_tokens=64), progress=False)
    assert gens.ids == [e.id for e in examples[:3]] and len(gens.predictions) == 3
    assert all(isinstance(p, str) for p in gens.predictions)
