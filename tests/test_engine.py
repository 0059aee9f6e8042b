"""The streaming engine against mergekit itself: same tensors, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from factory import make_family, read
from mk import mergekit_merge

from medmerge.cli import main
from medmerge.merge.engine import merge, merged_state_dict, open_parents, plan_merge
from medmerge.merge.recipe import parse_recipe


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


@pytest.fixture(scope="module")
def fam_bf16(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam16"), n_children=2, dtype=torch.bfloat16)


def recipes(f) -> dict[str, dict]:
    b, m0, m1 = str(f["base"]), str(f["m0"]), str(f["m1"])
    two = lambda **p: [{"model": m0, "parameters": {"weight": 0.6, **p}},  # noqa: E731
                       {"model": m1, "parameters": {"weight": 0.4, **p}}]
    return {
        "linear": {"merge_method": "linear", "models": two()},
        "linear_gradient_filter": {
            "merge_method": "linear",
            "models": [{"model": m0, "parameters": {"weight": [{"filter": "self_attn", "value": 0.9}, {"value": [0.1, 0.8]}]}},
                       {"model": m1, "parameters": {"weight": 0.5}}],
            "parameters": {"normalize": True},
        },
        "slerp": {"merge_method": "slerp", "base_model": m0, "models": [{"model": m0}, {"model": m1}],
                  "parameters": {"t": 0.3}},
        "slerp_gradient": {"merge_method": "slerp", "base_model": m0, "models": [{"model": m0}, {"model": m1}],
                           "parameters": {"t": [0.0, 0.5, 1.0]}},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": b, "models": two(),
                            "parameters": {"lambda": 0.8}},
        "ties": {"merge_method": "ties", "base_model": b, "models": two(density=0.5)},
        "breadcrumbs": {"merge_method": "breadcrumbs", "base_model": b, "models": two(density=0.8, gamma=0.05)},
        "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "base_model": b,
                             "models": two(density=0.8, gamma=0.05)},
        "tokenizer_source_base": {"merge_method": "task_arithmetic", "base_model": b, "models": two(),
                                  "tokenizer_source": "base"},
    }


def assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.mark.parametrize("name", list(recipes({"base": "b", "m0": "x", "m1": "y"})))
def test_bit_identical_to_mergekit(fam, tmp_path, name):
    data = recipes(fam)[name]
    mine = merge(parse_recipe(data), tmp_path / "mine", quiet=True)
    theirs = mergekit_merge(data, tmp_path / "theirs")
    assert_same_tensors(read(mine), read(theirs))


@pytest.mark.parametrize("dtypes", [{"dtype": "float32"}, {"dtype": "float32", "out_dtype": "bfloat16"}, {}])
def test_bit_identical_with_dtypes(fam_bf16, tmp_path, dtypes):
    data = {**recipes(fam_bf16)["task_arithmetic"], **dtypes}
    mine = read(merge(parse_recipe(data), tmp_path / "mine", quiet=True))
    theirs = read(mergekit_merge(data, tmp_path / "theirs"))
    assert_same_tensors(mine, theirs)
    expected = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtypes.get("out_dtype", dtypes.get("dtype", "bfloat16"))]
    assert mine["model.layers.0.mlp.up_proj.weight"].dtype == expected


def test_cli_merge_equals_mergekit_yaml_cli(fam, tmp_path):
    """The acceptance check as a user would run it: two command lines, one YAML."""
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(recipes(fam)["slerp"]))
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "medmerge", "merge", cfg, tmp_path / "out1", "-q"], check=True)
    subprocess.run([bin_dir / "mergekit-yaml", cfg, tmp_path / "out2", "--no-copy-tokenizer"], check=True,
                   capture_output=True)
    assert_same_tensors(read(tmp_path / "out1"), read(tmp_path / "out2"))


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_stochastic_same_seed_same_bits(fam, tmp_path, method):
    data = {**recipes(fam)["ties"], "merge_method": method}
    if method.startswith("della"):
        data["models"] = [{**m, "parameters": {**m["parameters"], "epsilon": 0.1}} for m in data["models"]]
    a = read(merge(parse_recipe({**data, "random_seed": 7}), tmp_path / "a", quiet=True))
    b = read(merge(parse_recipe({**data, "random_seed": 7}), tmp_path / "b", quiet=True))
    c = read(merge(parse_recipe({**data, "random_seed": 8}), tmp_path / "c", quiet=True))
    assert_same_tensors(a, b)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method,density", [("dare_linear", 0.3), ("dare_linear", 0.7), ("della_linear", 0.5)])
def test_kept_fraction_matches_density(tmp_path, method, density):
    fam = make_family(tmp_path / "f", n_children=1, hidden_size=64, intermediate_size=256)
    params = {"weight": 1.0, "density": density} | ({"epsilon": 0.1} if method == "della_linear" else {})
    r = parse_recipe({"merge_method": method, "base_model": str(fam["base"]), "random_seed": 1,
                      "models": [{"model": str(fam["m0"]), "parameters": params}]})
    merged = read(merge(r, tmp_path / "out", quiet=True))
    base = read(fam["base"])
    kept = total = 0
    for k, v in merged.items():
        kept += int((v != base[k]).sum())
        total += v.numel()
    assert abs(kept / total - density) < 0.01, kept / total


def test_output_is_a_loadable_checkpoint_with_card(fam, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = recipes(fam)["linear"]
    out = merge(parse_recipe(data), tmp_path / "out", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and len(tok) == model.config.vocab_size
    # the exported recipe reproduces itself
    assert yaml.safe_load((out / "mergekit_config.yml").read_text()) == parse_recipe(data).to_mergekit_dict()
    from medmerge.io.hashing import sha256_files

    card = (out / "README.md").read_text()
    for parent in ("m0", "m1"):
        digest = sha256_files([fam[parent] / "model.safetensors"], use_cache=False)
        assert next(iter(digest.values())) in card
    meta = json.loads((out / "medmerge.json").read_text())
    assert set(meta["parents"]) == {str(fam["m0"]), str(fam["m1"])}


def test_sharded_output_matches_single_file(fam, tmp_path):
    from transformers import AutoModelForCausalLM

    r = parse_recipe(recipes(fam)["linear"])
    single = merge(r, tmp_path / "single", quiet=True)
    sharded = merge(r, tmp_path / "sharded", quiet=True, max_shard_bytes=20_000)
    assert (sharded / "model.safetensors.index.json").exists()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 2
    assert_same_tensors(read(single), read(sharded))
    AutoModelForCausalLM.from_pretrained(sharded)  # transformers reads the index


def test_row_chunked_linear_equals_whole_tensors(fam, tmp_path):
    r = parse_recipe(recipes(fam)["linear"])
    whole = read(merge(r, tmp_path / "whole", quiet=True))
    chunked = read(merge(r, tmp_path / "chunked", quiet=True, chunk_bytes=1000))
    assert_same_tensors(whole, chunked)


def test_in_memory_plan_equals_written(fam, tmp_path):
    r = parse_recipe(recipes(fam)["ties"])
    parents = open_parents(r.parent_refs)
    sd = merged_state_dict(plan_merge(r, parents))
    assert_same_tensors(sd, read(merge(r, tmp_path / "o", quiet=True)))


def test_refuses_existing_output(fam, tmp_path, capsys):
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump(recipes(fam)["linear"]))
    (tmp_path / "out").mkdir()
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q", "--overwrite"]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_compute_threads_leaves_cores_to_writers_and_restores(monkeypatch):
    from medmerge.merge import engine

    before = torch.get_num_threads()
    monkeypatch.setattr(engine, "_available_cores", lambda: 8)
    torch.set_num_threads(8)
    try:
        with engine.compute_threads(2):
            assert torch.get_num_threads() == 6
        assert torch.get_num_threads() == 8
        with pytest.raises(RuntimeError, match="boom"), engine.compute_threads(12):  # never below one thread, restored on error
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 8
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name, elementwise", [("linear", True), ("task_arithmetic", True), ("slerp", False),
                                               ("ties", False)])
def test_thread_count_changes_only_around_elementwise_math(fam, tmp_path, monkeypatch, name, elementwise):
    """A reduction's rounding depends on torch's thread count, so only elementwise methods may give
    cores to the writers; the result equals the in-memory merge at the default thread count."""
    from medmerge.merge import engine

    calls = []
    real = engine.compute_threads

    def spy(busy):
        calls.append(busy)
        return real(busy)

    monkeypatch.setattr(engine, "compute_threads", spy)
    r = parse_recipe(recipes(fam)[name])
    written = read(merge(r, tmp_path / "o", quiet=True))
    assert calls == ([1] if elementwise else [])
    assert_same_tensors(written, merged_state_dict(plan_merge(r, open_parents(r.parent_refs))))


def test_elementwise_bits_do_not_depend_on_thread_count(tmp_path):
    """MLP tensors large enough for torch to split across threads (1024 x 256, above its grain of
    32768 elements) give the same bits at one thread as at two, for every row-separable method.
    (slerp's norms do not: on this family two of its tensors differ between one and two threads.)"""
    big = make_family(tmp_path / "big", n_children=2, dtype=torch.bfloat16, hidden_size=256,
                      intermediate_size=1024, num_attention_heads=4, num_key_value_heads=4)
    before = torch.get_num_threads()
    if before < 2:
        torch.set_num_threads(2)
    try:
        for name in ("linear", "task_arithmetic"):
            r = parse_recipe(recipes(big)[name])
            plan = plan_merge(r, open_parents(r.parent_refs))
            assert plan.steps and all(s.row_separable for s in plan.steps)
            assert max(s.spec.nbytes // 2 for s in plan.steps) >= 1024 * 256
            default = merged_state_dict(plan)
            torch.set_num_threads(1)
            one = merged_state_dict(plan)
            torch.set_num_threads(max(before, 2))
            assert_same_tensors(default, one)
    finally:
        torch.set_num_threads(before)
