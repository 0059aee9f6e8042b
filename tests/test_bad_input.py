"""Every refused input, through the CLI: a message naming the problem, exit 2, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from factory import WORDS, llama_config, llama_state_dict, make_family, read, write_checkpoint, write_tokenizer
from safetensors.torch import save_file

from medmerge.cli import main


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


def run_cli(capsys, tmp_path, recipe: dict | str, command="merge"):
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
    code = main([command, str(cfg), str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    return code, err


def assert_nothing_written(tmp_path: Path):
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".medmerge-tmp-*"))


def linear_of(*paths) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in paths]}


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("recipe,message", [
    ("merge_method: linear\nmodels: [model: a\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ({"merge_method": "frankenmerge", "models": [{"model": "a"}]}, "unknown merge method 'frankenmerge'"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"wieght": 1}}]},
     "parameter 'wieght' is not declared by linear"),
    ({"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}],
      "parameters": {"t": 0.5, "density": 0.3}}, "parameter 'density' is not declared by slerp"),
    ({"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b", "parameters": {"t": 0.5}}]},
     "parameter 't' of slerp is set once"),
    ({"merge_method": "slerp", "base_model": "a", "models": [{"model": "a"}, {"model": "b"}]},
     "slerp needs parameter 't'"),
    ({"merge_method": "ties", "models": [{"model": "a", "parameters": {"weight": 1}}]}, "ties needs base_model"),
    ({"merge_method": "hierarchical_ot", "base_model": "z", "models": [{"model": "a"}]},
     "hierarchical_ot needs at least 2 model(s)"),
    ({"merge_method": "hierarchical_ot", "base_model": "z", "models": [{"model": "a"}, {"model": "b"}],
      "parameters": {"align": "per_head"}}, "must be one of"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1}}], "dtype": "float8"},
     "unknown dtype 'float8'"),
    ({"merge_method": "linear", "slices": []}, "unknown key 'slices'"),
])
def test_malformed_recipes(capsys, tmp_path, recipe, message):
    code, err = run_cli(capsys, tmp_path, recipe)
    assert code == 2
    assert message in err
    assert_nothing_written(tmp_path)


def test_missing_config_file(capsys, tmp_path):
    assert main(["merge", str(tmp_path / "nope.yml"), str(tmp_path / "out")]) == 2
    assert "nope.yml does not exist" in capsys.readouterr().err


def test_missing_model_path(capsys, tmp_path, fam):
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], tmp_path / "no_such_model"))
    assert code == 2 and "no_such_model does not exist" in err
    assert_nothing_written(tmp_path)


def test_unreachable_hub_id_is_named(capsys, tmp_path, fam, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], "some-org/some-model"))
    assert code == 2 and "some-org/some-model is not a local directory" in err
    assert_nothing_written(tmp_path)


def test_architectures_differ(capsys, tmp_path, fam):
    other = copy_model(fam["m1"], tmp_path / "mistral")
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (other / "config.json").write_text(json.dumps(cfg))
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "architectures differ" in err and "MistralForCausalLM" in err
    assert_nothing_written(tmp_path)


def test_missing_tensor(capsys, tmp_path, fam):
    sd = read(fam["m1"])
    del sd["model.layers.1.mlp.up_proj.weight"]
    other = write_checkpoint(tmp_path / "holey", sd, llama_config())
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "tensor model.layers.1.mlp.up_proj.weight is missing from" in err
    assert_nothing_written(tmp_path)


def test_shape_mismatch(capsys, tmp_path, fam):
    sd = read(fam["m1"])
    sd["model.layers.0.mlp.up_proj.weight"] = torch.zeros(40, 32)
    other = write_checkpoint(tmp_path / "misshapen", sd, llama_config())
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "model.layers.0.mlp.up_proj.weight has shape [48, 32]" in err and "[40, 32]" in err
    assert_nothing_written(tmp_path)


def test_vocabulary_size_mismatch(capsys, tmp_path, fam):
    cfg = llama_config(vocab_size=len(WORDS) + 8)
    other = write_checkpoint(tmp_path / "bigvocab", llama_state_dict(cfg, 3), cfg)
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and f"vocabulary sizes differ" in err and str(len(WORDS) + 8) in err
    assert_nothing_written(tmp_path)


def test_tokenizers_differ(capsys, tmp_path, fam):
    other = copy_model(fam["m1"], tmp_path / "othertok")
    words = list(WORDS)
    words[10], words[11] = words[11], words[10]  # same size, different vocabulary
    write_tokenizer(other, words)
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "tokenizers differ" in err and "tokenizer.json" in err
    assert_nothing_written(tmp_path)


def test_adapter_checkpoint_is_refused(capsys, tmp_path, fam):
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(8, 32)}, str(adapter / "adapter_model.safetensors"))
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], adapter))
    assert code == 2 and "is a PEFT adapter" in err
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weights(capsys, tmp_path, fam, bad):
    sd = read(fam["m1"])
    sd["model.layers.1.mlp.down_proj.weight"][3, 4] = bad
    other = write_checkpoint(tmp_path / "poisoned", sd, llama_config())
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "model.layers.1.mlp.down_proj.weight" in err and ("NaN" if bad != bad else "Inf") in err
    assert_nothing_written(tmp_path)
    assert main(["check", str(fam["m0"]), str(other), "--scan-values"]) == 2


def test_corrupt_safetensors(capsys, tmp_path, fam):
    other = copy_model(fam["m1"], tmp_path / "corrupt")
    (other / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "not a readable safetensors file" in err
    assert_nothing_written(tmp_path)


def test_pickle_refused_unless_allowed(capsys, tmp_path, fam):
    other = tmp_path / "pickled"
    other.mkdir()
    shutil.copy(fam["m1"] / "config.json", other)
    for f in fam["m1"].glob("tokenizer*"):
        shutil.copy(f, other)
    torch.save(read(fam["m1"]), other / "pytorch_model.bin")
    code, err = run_cli(capsys, tmp_path, linear_of(fam["m0"], other))
    assert code == 2 and "pickle" in err and "--allow-pickle" in err
    assert_nothing_written(tmp_path)
    cfg = tmp_path / "recipe.yml"
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q", "--allow-pickle"]) == 0
    assert torch.equal(read(tmp_path / "out")["model.norm.weight"],
                       0.5 * read(fam["m0"])["model.norm.weight"] + 0.5 * read(fam["m1"])["model.norm.weight"])


def test_check_command_accepts_compatible(capsys, fam):
    assert main(["check", str(fam["base"]), str(fam["m0"]), str(fam["m1"]), "--scan-values"]) == 0
    assert "compatible" in capsys.readouterr().out


def test_interrupted_merge_leaves_no_checkpoint(tmp_path, fam, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) mid-write leaves neither the output nor its temp dir. A real SIGKILL of
    `medmerge merge` and `medmerge sweep` is tests/test_kill.py."""
    from medmerge.io import writer
    from medmerge.merge.engine import merge
    from medmerge.merge.recipe import parse_recipe

    calls = {"n": 0}
    real = writer.StreamingCheckpointWriter.write

    def dying_write(self, name, t):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("ctrl-c during the fifth tensor")
        return real(self, name, t)

    monkeypatch.setattr(writer.StreamingCheckpointWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt, match="fifth tensor"):
        merge(parse_recipe(linear_of(fam["m0"], fam["m1"])), tmp_path / "out", quiet=True)
    assert_nothing_written(tmp_path)


def test_disk_full_removes_temp_dir_and_says_so(tmp_path, fam, monkeypatch):
    import errno

    from medmerge.errors import OutputError
    from medmerge.io import writer
    from medmerge.merge.engine import merge
    from medmerge.merge.recipe import parse_recipe

    def full(self, name, t):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.StreamingCheckpointWriter, "write", full)
    with pytest.raises(OutputError, match="no space left on device.*temporary directory .* was removed"):
        merge(parse_recipe(linear_of(fam["m0"], fam["m1"])), tmp_path / "out", quiet=True)
    assert_nothing_written(tmp_path)
