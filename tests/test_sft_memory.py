"""The SFT memory estimate, worked by hand on a tiny shape, and the refusal of a setting that cannot fit,
tested on a CPU with an 8B config (counted on the meta device: no weights, no download)."""

from __future__ import annotations

import json

import pytest
from factory import llama_config

from medmerge.cli import main
from medmerge.finetune.sft import SFTSettings, accelerate_command, finetune
from medmerge.finetune.sft_memory import GIB, Device, MemorySetting, ModelShape, SFTMemoryError, check_fits, estimate
from medmerge.generation.data import GenerationExample

# hidden 64, MLP 128, 2 layers, vocabulary 100, untied head
TINY = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, head_dim=16)
# Meta-Llama-3-8B's config.json (the shapes only)
LLAMA3_8B = llama_config(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=8192,
                         bos_token_id=128000, eos_token_id=128001, pad_token_id=None, dtype="bfloat16")


def test_model_shape_counts_parameters_and_lora_adapters(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(llama_config(**TINY)))
    shape = ModelShape.from_checkpoint(tmp_path)
    # embeddings 100*64, per layer q,k,v,o 4*64*64 + MLP 3*64*128 + 2 norms of 64, final norm 64, head 100*64
    assert shape.params == 6400 + 2 * (16384 + 24576 + 128) + 64 + 6400 == 95040
    # LoRA rank 1 on every linear but the head: (in + out) per layer: 4*(64+64) + 2*(64+128) + (128+64)
    assert shape.lora_params == 2 * (4 * 128 + 3 * 192) == 2176
    assert (shape.layers, shape.hidden, shape.intermediate, shape.vocab) == (2, 64, 128, 100)


def test_estimate_worked_by_hand(tmp_path):
    shape = ModelShape(params=95040, lora_params=2176, layers=2, hidden=64, intermediate=128, vocab=100)
    tokens = 2 * 16  # batch 2 x 16 tokens
    # float32 full fine-tuning, AdamW, gradient checkpointing
    e = estimate(shape, MemorySetting(dtype="float32", per_device_batch=2, max_length=16))
    assert (e.weights, e.gradients, e.optimiser) == (95040 * 4, 95040 * 4, 95040 * 8)
    layer_inputs = 2 * tokens * 64 * 4               # L * tokens * H * 4 bytes
    one_layer = tokens * (10 * 64 + 4 * 128) * 4     # the layer being recomputed
    logits = tokens * 100 * (4 + 4)                  # logits and their float32 copy
    assert e.activations == layer_inputs + one_layer + logits == 189440
    assert e.per_device == 4 * 95040 * 4 + 189440 == 1710080
    # bfloat16 LoRA r=16, 8-bit AdamW, no checkpointing: adapters trained in float32
    e = estimate(shape, MemorySetting(dtype="bfloat16", lora=True, lora_r=16, optim="adamw_8bit",
                                      gradient_checkpointing=False, per_device_batch=2, max_length=16))
    assert (e.weights, e.gradients, e.optimiser) == (95040 * 2, 34816 * 4, 34816 * 2)
    assert e.activations == 2 * tokens * (10 * 64 + 4 * 128) * 2 + tokens * 100 * (2 + 4) == 166656
    # 4 GPUs, sharded: weights, gradients and optimiser split four ways; activations per GPU
    e = estimate(shape, MemorySetting(dtype="float32", per_device_batch=2, max_length=16, num_gpus=4))
    assert e.per_device == 4 * 95040 * 4 // 4 + 189440
    # a paged optimiser's states live in host RAM when the GPU runs short
    e = estimate(shape, MemorySetting(dtype="float32", optim="paged_adamw_8bit", per_device_batch=2, max_length=16))
    assert e.per_device == 2 * 95040 * 4 + 189440


def test_8b_in_float32_does_not_fit_one_h200_but_bf16_or_fsdp_does(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    shape = ModelShape.from_checkpoint(tmp_path)
    assert shape.params == 8_030_261_248  # Meta-Llama-3-8B
    s = MemorySetting(dtype="float32")
    e = estimate(shape, s)
    assert e.weights + e.gradients + e.optimiser == 16 * shape.params  # the "about 128 GB"
    h200 = Device(kind="cuda", bytes=141 * GIB, name="GPU H200")
    with pytest.raises(SFTMemoryError, match=r"needs about 179\.0 GiB") as err:
        check_fits(shape, s, h200)
    msg = str(err.value)
    assert "needs about 179.0 GiB" in msg and "has 141.0 GiB" in msg
    for fix in ("dtype: bfloat16 (~", "lora: true (~", "optim: adamw_8bit (~", "optim: paged_adamw_8bit (~",
                "num_gpus: 2 (FSDP) (~"):
        assert fix in msg, fix
    assert check_fits(shape, MemorySetting(dtype="bfloat16", lora=True), h200).per_device < 141 * GIB


def test_finetune_refuses_before_loading_anything(tmp_path):
    model = tmp_path / "llama3-8b"   # a config.json and nothing else: no weights to load
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA3_8B))
    ex = [GenerationExample(id="a", input="w1 w2", target="w3")]
    with pytest.raises(SFTMemoryError, match=r"needs about .* but the CPU \(available RAM\) \(device_memory_gib "
                                             r"setting\) has 32\.0 GiB; settings that would fit: .*lora: true"):
        finetune(model, ex, tmp_path / "out", SFTSettings(device_memory_gib=32), max_steps=1)
    assert not (tmp_path / "out").exists()


def test_sft_memory_cli_exit_codes(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_8B))
    assert main(["sft-memory", str(tmp_path), "--device-memory-gib", "80"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medmerge: error: SFT of a 8.03B-parameter model needs about") and "has 80.0 GiB" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["sft-memory", str(tmp_path), "--device-memory-gib", "80", "--dtype", "bfloat16", "--lora",
                 "--per-device-batch", "1"]) == 0
    assert capsys.readouterr().out.startswith("fits: about ")


def test_multi_gpu_launch_is_accelerate_with_fsdp_or_zero3(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    fsdp = accelerate_command(SFTSettings(num_gpus=4), tmp_path / "job.json", mixed_bf16=True)
    assert fsdp[1:3] == ["-m", "accelerate.commands.launch"]
    args = parser.parse_args(fsdp[3:])  # accelerate's own parser takes every flag we pass
    assert (args.num_processes, args.use_fsdp, args.fsdp_sharding_strategy, args.mixed_precision) == \
        (4, True, "FULL_SHARD", "bf16")
    assert args.module and args.training_script == "medmerge.finetune.sft" and args.training_script_args == [
        str(tmp_path / "job.json")]
    ds = parser.parse_args(accelerate_command(SFTSettings(num_gpus=8, distributed="deepspeed"), "j.json")[3:])
    assert (ds.num_processes, ds.use_deepspeed, ds.zero_stage) == (8, True, 3)


@pytest.mark.parametrize("make, says", [
    (lambda d: d / "missing", "no such directory"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no config.json in it"),
    (lambda d: (d / "file.bin").write_bytes(b"\x00") and d / "file.bin", "no config.json in it"),
    (lambda d: (d / "nomodel").mkdir() or (d / "nomodel" / "config.json").write_text("{}") and d / "nomodel",
     "cannot read its config (Unrecognized model"),
])
def test_sft_memory_names_a_bad_model_path(tmp_path, capsys, make, says):
    path = make(tmp_path)
    assert main(["sft-memory", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"medmerge: error: model {path}: ") and says in err[0], err
