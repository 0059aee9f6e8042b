"""SFT with TRL on the demo models: step rule, loss falls, full and LoRA outputs are full checkpoints."""

from __future__ import annotations

import pytest
import torch
from factory import SHARED_DATA, read

from medmerge.errors import OutputError
from medmerge.finetune.sft import SFTSettings, finetune, optimisation_steps
from medmerge.generation.data import GenerationExample, load_task

DATA = SHARED_DATA


def test_optimisation_steps_follow_the_forgetting_study():
    s = SFTSettings()
    assert optimisation_steps(8, s, few_shot=True) == 100      # 15 * ceil(8/16) = 15 < 100
    assert optimisation_steps(512, s, few_shot=True) == 480    # 15 * ceil(512/16) = 15 * 32
    assert optimisation_steps(10, s, few_shot=False) == 200    # 15 * 1 < 200
    assert optimisation_steps(1201, s, few_shot=False) == 1140  # 15 * ceil(1201/16) = 15 * 76
    with pytest.raises(ValueError, match="SFT needs at least one example"):
        optimisation_steps(0, s, few_shot=True)


def test_an_sft_run_crosses_the_multi_gpu_launcher_as_json():
    """Rank 0 of ``accelerate launch`` writes its SFTRun as JSON; the launcher reads back the same run."""
    import json

    from medmerge.finetune.sft import SFTRun

    run = SFTRun(steps=3, train_loss=1.5, out_dir="/out", first_loss=2.0, last_loss=1.0, losses=[2.0, 1.5, 1.0],
                 dtype="bfloat16", memory_estimate_gib=0.5)
    assert SFTRun.from_json(json.loads(json.dumps(run.to_json()))) == run
    assert SFTRun.from_json({**run.to_json(), "written_by": "a later medmerge"}) == run
    assert SFTRun(steps=0, train_loss=None, out_dir="/init").losses == []


def examples() -> list[GenerationExample]:
    if DATA.is_dir():
        return load_task("mts_dialog", "train", data_dir=DATA)[:8]
    return [GenerationExample(id=str(i), input=f"Doctor: any pain? Patient: yes, {i} days.", target="Pain.", extra={})
            for i in range(8)]


@pytest.mark.parametrize("lora", [False, True])
def test_finetune_lowers_loss_and_writes_a_full_checkpoint(demo_models, tmp_path, lora):
    from transformers import AutoModelForCausalLM

    settings = SFTSettings(learning_rate=1e-3, max_length=512, lora=lora)
    out = finetune(demo_models["clinical"], examples(), tmp_path / "sft", settings, max_steps=6)
    assert out.steps == 6 and out.last_loss < out.first_loss and out.out_dir == str(tmp_path / "sft")
    assert (tmp_path / "sft" / "model.safetensors").exists() and not (tmp_path / "sft" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    before, after = read(demo_models["clinical"]), read(tmp_path / "sft")
    assert sorted(before) == sorted(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(OutputError, match="already exists"):
        finetune(demo_models["clinical"], examples(), tmp_path / "sft", settings, max_steps=1)
