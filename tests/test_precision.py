"""The dtype setting: ``auto`` is the checkpoint's dtype on a CUDA GPU and float32 on a CPU, so on a CPU
it gives exactly the float32 numbers; the report records the dtype used."""

from __future__ import annotations

import json
import shutil
from importlib.resources import files

import pytest
import torch

from medmerge.cli import main
from medmerge.evaluation.runner import EvalOptions, EvalSettings, evaluate_checkpoint, load_model
from medmerge.precision import PrecisionError, checkpoint_dtype, resolve_dtype
from medmerge.sft import SFTSettings


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
def bf16_declared(demo_models, tmp_path):
    """The demo clinical model with a config that declares bfloat16 (as Llama 3 checkpoints do)."""
    d = tmp_path / "bf16-declared"
    shutil.copytree(demo_models["clinical"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_auto_on_cpu_gives_exactly_the_float32_numbers(bf16_declared):
    data = str(files("medmerge") / "resources" / "eval_sample")
    kw = dict(suites=("clinical",), data_dir=data, limit=4)
    auto = evaluate_checkpoint(bf16_declared, EvalSettings(**kw))
    fp32 = evaluate_checkpoint(bf16_declared, EvalSettings(**kw, dtype="float32"))
    assert auto.settings["dtype"] == fp32.settings["dtype"] == "float32"
    assert auto.medical_avg == fp32.medical_avg
    assert {t: r.metrics for t, r in auto.tasks.items()} == {t: r.metrics for t, r in fp32.tasks.items()}
    # the setting is real: bfloat16 loads 16-bit weights
    model, _ = load_model(bf16_declared, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_cli_dtype_is_recorded_in_the_report(bf16_declared, tmp_path):
    out = tmp_path / "r.json"
    data = str(files("medmerge") / "resources" / "eval_sample")
    code = main(["evaluate", str(bf16_declared), "--suite", "clinical", "--data-dir", data, "--limit", "2",
                 "--dtype", "bfloat16", "--out", str(out), "--no-cache", ])
    assert code == 0
    assert json.loads(out.read_text())["settings"]["dtype"] == "bfloat16"
    assert main(["evaluate", str(bf16_declared), "--dtype", "int8", "--out", str(out)]) == 2
