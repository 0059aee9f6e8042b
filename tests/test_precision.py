"""The dtype setting: ``auto`` is the checkpoint's dtype on a CUDA GPU and float32 on a CPU (a bfloat16
checkpoint is loaded upcast); the report records the dtype used."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import torch
from factory import llama_config, llama_state_dict, write_checkpoint

from medmerge.cli import main
from medmerge.evaluation.runner import EvalOptions, EvalSettings, evaluate_checkpoint, load_model
from medmerge.finetune.sft import SFTSettings
from medmerge.merge.precision import PrecisionError, checkpoint_dtype, resolve_dtype


def fake_cuda(monkeypatch, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_auto_is_float32_on_cpu_and_the_checkpoints_dtype_on_cuda(monkeypatch):
    bf16_ckpt = {"torch_dtype": "bfloat16"}
    assert checkpoint_dtype(bf16_ckpt) == "bfloat16" and checkpoint_dtype({"dtype": "float16"}) == "float16"
    assert checkpoint_dtype({}) is None
    assert resolve_dtype("auto", "cpu", bf16_ckpt) == "float32"
    assert resolve_dtype("bf16", "cpu", bf16_ckpt) == "bfloat16"  # asked for explicitly: used as asked
    fake_cuda(monkeypatch, bf16=True)
    assert resolve_dtype("auto", "cuda", bf16_ckpt) == "bfloat16"
    assert resolve_dtype("auto", "cuda:1", {"torch_dtype": "float32"}) == "float32"
    assert resolve_dtype("auto", "cuda", {}) == "float32"  # nothing declared: full precision
    assert resolve_dtype("auto", "cpu", bf16_ckpt) == "float32"  # a GPU exists, but evaluation runs on the CPU
    fake_cuda(monkeypatch, bf16=False)  # pre-Ampere: the checkpoint's 16 bits as float16
    assert resolve_dtype("auto", "cuda", bf16_ckpt) == "float16"
    with pytest.raises(PrecisionError, match="does not support bfloat16"):
        resolve_dtype("bfloat16", "cuda", bf16_ckpt)
    with pytest.raises(PrecisionError, match="'int8' is not one of"):
        resolve_dtype("int8", "cpu")


def test_run_configs_accept_dtype_and_refuse_unknown_ones():
    from pydantic import ValidationError

    from medmerge.generation.generate import GenerationSettings

    assert EvalOptions(dtype="bf16").eval_settings().dtype == "bfloat16"
    assert EvalOptions().eval_settings().dtype == "auto"
    assert SFTSettings(dtype="fp32").dtype == "float32" and GenerationSettings().dtype == "auto"
    for model in (EvalOptions, SFTSettings, GenerationSettings):
        with pytest.raises(ValidationError, match="dtype 'int4' is not one of"):
            model(dtype="int4")


@pytest.fixture
def bf16_declared(tmp_path):
    """A tiny checkpoint stored in bfloat16 whose config declares it (as Llama 3 checkpoints do)."""
    cfg = llama_config(dtype="bfloat16", max_position_embeddings=256)
    sd = {k: v.to(torch.bfloat16) for k, v in llama_state_dict(cfg, seed=5).items()}
    return write_checkpoint(tmp_path / "bf16-declared", sd, cfg)


def test_auto_on_a_cpu_loads_a_bf16_checkpoint_upcast_to_float32_and_records_it(bf16_declared):
    """What ``auto`` does on a CPU, observed (not ``auto`` and ``float32`` evaluated side by side: on a CPU that
    is one computation run twice): the bfloat16 checkpoint is loaded as the exact float32 upcast of its stored
    values, and the report records float32; bfloat16, asked for, loads 16-bit weights."""
    from factory import read

    model, _ = load_model(bf16_declared)                       # dtype "auto"
    stored = read(bf16_declared)
    assert {v.dtype for v in stored.values()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in stored.items())
    data = str(files("medmerge") / "resources" / "eval_sample")
    report = evaluate_checkpoint(bf16_declared, EvalSettings(suites=("clinical",), data_dir=data, limit=2))
    assert report.settings["dtype"] == "float32"
    model16, _ = load_model(bf16_declared, dtype="bfloat16")
    assert {p.dtype for p in model16.parameters()} == {torch.bfloat16}


def test_cli_dtype_is_recorded_in_the_report(bf16_declared, tmp_path):
    out = tmp_path / "r.json"
    data = str(files("medmerge") / "resources" / "eval_sample")
    code = main(["evaluate", str(bf16_declared), "--suite", "clinical", "--data-dir", data, "--limit", "2",
                 "--dtype", "bfloat16", "--out", str(out), "--no-cache", ])
    assert code == 0
    assert json.loads(out.read_text())["settings"]["dtype"] == "bfloat16"
    assert main(["evaluate", str(bf16_declared), "--dtype", "int8", "--out", str(out)]) == 2


def test_sft_trains_in_the_resolved_dtype(bf16_declared, tmp_path):
    from safetensors import safe_open

    from medmerge.finetune.sft import finetune
    from medmerge.generation.data import GenerationExample

    ex = [GenerationExample(id=str(i), input=f"w{i} w{i + 1}", target=f"w{i + 2}") for i in range(4)]
    small = dict(per_device_batch=2, grad_accum=1, max_length=32, gradient_checkpointing=False)
    auto = finetune(bf16_declared, ex, tmp_path / "auto", SFTSettings(**small), max_steps=1)
    bf16 = finetune(bf16_declared, ex, tmp_path / "bf16", SFTSettings(**small, dtype="bfloat16"), max_steps=1)
    assert (auto.dtype, bf16.dtype) == ("float32", "bfloat16")   # auto on a CPU: float32
    assert 0 < bf16.memory_estimate_gib < auto.memory_estimate_gib
    for name, want in (("auto", torch.float32), ("bf16", torch.bfloat16)):
        with safe_open(str(tmp_path / name / "model.safetensors"), "pt") as f:
            assert f.get_tensor("model.embed_tokens.weight").dtype == want, name
