"""Supervised fine-tuning of a (merged) checkpoint on a clinical generation task, with TRL.

Defaults follow the forgetting study ("Countering Catastrophic Forgetting of Large Language Models
for Better Instruction Following via Weight-Space Model Merging"): 15 epochs, learning rate 5e-6,
effective batch 16 (per-device 4 × accumulation 4), max length 8192, and at least 200 optimisation
steps for full data or 100 for few-shot runs:

    steps = max(epochs · ceil(n / (per_device · accumulation)), min_steps)

Loss is on the completion only (TRL's prompt–completion format). ``lora=True`` trains a PEFT
LoRA adapter and merges it back, so the output is always a full checkpoint, written atomically.

``dtype`` (``auto``: the checkpoint's dtype on a CUDA GPU, float32 on a CPU) is the dtype the
weights are loaded and trained in. Before any weight is loaded, the memory the setting needs is
estimated (:mod:`medmerge.finetune.sft_memory`) and a setting that cannot fit the device is refused with
the settings that would. With ``num_gpus > 1`` the same function runs under ``accelerate launch``
(FSDP full sharding, or DeepSpeed ZeRO-3), one process per GPU: ``python -m medmerge.finetune.sft JOB.json``
is the entry point each process runs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medmerge.errors import MedmergeError
from medmerge.generation.data import GenerationExample
from medmerge.merge.precision import DType, normalise

DEFAULT_INSTRUCTION = "Write the clinical text requested for the following input."


class SFTSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    epochs: int = Field(15, ge=1)
    learning_rate: float = Field(5e-6, gt=0.0, allow_inf_nan=False)
    per_device_batch: int = Field(4, ge=1)
    grad_accum: int = Field(4, ge=1)
    max_length: int = Field(8192, ge=1)
    min_steps_full: int = Field(200, ge=0)
    min_steps_few_shot: int = Field(100, ge=0)
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    gradient_checkpointing: bool = True   # TRL's default: saves memory on large models, costs time on tiny ones
    bf16: bool | None = None              # None: bf16 mixed precision on a GPU that has it, fp32 on CPU
    dtype: DType = "auto"                 # the weights' dtype; auto: the checkpoint's on CUDA, float32 on CPU
    optim: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"] = "adamw_torch"
    num_gpus: int = Field(1, ge=1)        # > 1: accelerate launch, one process per GPU, sharded
    distributed: Literal["fsdp", "deepspeed"] = "fsdp"   # FSDP full shard, or DeepSpeed ZeRO-3
    device_memory_gib: float | None = Field(None, gt=0)  # the memory check's device size (default: detected)
    seed: int = 0
    instruction: str = DEFAULT_INSTRUCTION

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v):
        return normalise(v)


class SFTLaunchError(MedmergeError):
    """The distributed SFT launch cannot start or one of its processes failed."""


class NonFiniteTrainingError(MedmergeError):
    """The training loss or gradient norm became NaN or infinite, or the trained weights did: SFT stops and
    nothing is written (so nothing is registered)."""


def finite_training_callback(what: str):
    """A ``transformers.TrainerCallback`` that stops training with :class:`NonFiniteTrainingError` naming
    ``what`` (the model and output) as soon as a logged ``loss`` or ``grad_norm`` is not finite (the trainer
    logs every step)."""
    from transformers import TrainerCallback

    class FiniteTraining(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise NonFiniteTrainingError(
                        f"SFT of {what}: the training {key.replace('_', ' ')} became {value} at step "
                        f"{state.global_step}; nothing was written (lower learning_rate, or check the model's "
                        "weights and dtype)")

    return FiniteTraining()


def check_finite_weights(model, what: str) -> None:
    """:class:`NonFiniteTrainingError` naming the first parameter of ``model`` that holds NaN or inf."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not (torch.isfinite(p.amax()) and torch.isfinite(p.amin())):
                raise NonFiniteTrainingError(f"SFT of {what}: the trained weight {name} is not finite; "
                                             "nothing was written")


def optimisation_steps(n_examples: int, settings: SFTSettings, few_shot: bool) -> int:
    """``max(epochs · ceil(n / effective batch), min_steps)`` (min 100 few-shot, 200 full by default)."""
    if n_examples <= 0:
        raise ValueError("SFT needs at least one example")
    per_epoch = math.ceil(n_examples / (settings.per_device_batch * settings.grad_accum))
    floor = settings.min_steps_few_shot if few_shot else settings.min_steps_full
    return max(settings.epochs * per_epoch, floor)


def prompt_for(example: GenerationExample, tokenizer, instruction: str) -> str:
    """The prompt: the tokenizer's chat template when it has one, else instruction and input as text."""
    user = f"{instruction}\n\n{example.input}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return user + "\n\n"


def memory_setting(settings: SFTSettings, dtype: str, mixed_bf16: bool):
    """The estimate's view of ``settings`` with the dtype resolved."""
    from medmerge.finetune.sft_memory import MemorySetting

    return MemorySetting(dtype=dtype, mixed_bf16=mixed_bf16, lora=settings.lora, lora_r=settings.lora_r,
                         optim=settings.optim, gradient_checkpointing=settings.gradient_checkpointing,
                         per_device_batch=settings.per_device_batch, max_length=settings.max_length,
                         num_gpus=settings.num_gpus)


def plan_precision(model_path: str | Path, settings: SFTSettings) -> tuple[str, bool]:
    """``(weights dtype, bf16 autocast)`` for ``settings`` on this machine."""
    import torch

    from medmerge.merge.precision import resolve_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype(settings.dtype, device, model_path)
    bf16 = settings.bf16
    if bf16 is None:  # TRL turns bf16 autocast on by default; on a CPU it is many times slower than fp32
        bf16 = device == "cuda" and torch.cuda.is_bf16_supported() and dtype != "float16"
    return dtype, bool(bf16)


def check_memory(model_path: str | Path, settings: SFTSettings, dtype: str | None = None,
                 mixed_bf16: bool | None = None):
    """Estimate the memory ``settings`` need for ``model_path`` (from its config.json only) and refuse
    (:class:`medmerge.finetune.sft_memory.SFTMemoryError`, exit 2) when it cannot fit; returns the estimate."""
    from medmerge.finetune.sft_memory import Device, ModelShape, check_fits

    if dtype is None or mixed_bf16 is None:
        dtype, mixed_bf16 = plan_precision(model_path, settings)
    device = Device.detect(settings.device_memory_gib)
    return check_fits(ModelShape.from_checkpoint(model_path), memory_setting(settings, dtype, mixed_bf16), device)


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def accelerate_command(settings: SFTSettings, job: str | Path, mixed_bf16: bool = False) -> list[str]:
    """``accelerate launch`` for ``settings.num_gpus`` processes running ``python -m medmerge.finetune.sft JOB``.

    FSDP: full sharding of weights, gradients and optimiser states, one wrap per decoder layer, the
    full state dict gathered on rank 0 for saving. DeepSpeed: ZeRO-3 with a 16-bit model saved."""
    n = settings.num_gpus
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--num_machines", "1",
           "--machine_rank", "0", "--main_process_port", os.environ.get("MEDMERGE_SFT_PORT", "29517"),
           "--mixed_precision", "bf16" if mixed_bf16 else "no"]
    if settings.distributed == "fsdp":
        cmd += ["--use_fsdp", "--fsdp_sharding_strategy", "FULL_SHARD",
                "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_state_dict_type", "FULL_STATE_DICT",
                "--fsdp_backward_prefetch", "BACKWARD_PRE", "--fsdp_use_orig_params", "true",
                "--fsdp_cpu_ram_efficient_loading", "true", "--fsdp_sync_module_states", "true",
                "--fsdp_offload_params", "false"]
    else:
        cmd += ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "true", "--zero3_save_16bit_model",
                "true", "--offload_optimizer_device", "none", "--offload_param_device", "none",
                "--gradient_accumulation_steps", str(settings.grad_accum)]
    return cmd + ["--module", "medmerge.finetune.sft", str(job)]


@dataclass(frozen=True)
class SFTRun:
    """What one fine-tuning did: its steps and losses, where the checkpoint is, its dtype, memory and speed
    (None where not measured: a run recorded earlier, or a shot size of 0 that trains nothing)."""

    steps: int
    train_loss: float | None
    out_dir: str
    first_loss: float | None = None
    last_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    dtype: str | None = None                    # the dtype it trained in (auto resolved)
    memory_estimate_gib: float | None = None    # per device, as check_memory estimated it
    seconds: float | None = None                # wall time, model load included
    train_seconds: float | None = None          # the Trainer's own runtime
    samples_per_second: float | None = None
    # what the training cost where it ran (cost.sft_train.*: wall time, peak RSS and GPU memory), recorded
    # beside the checkpoint so that a step that finds it finished (trained by a worker) logs the same
    cost: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> SFTRun:
        """An SFTRun from :meth:`to_json`'s mapping (keys it does not know are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _launch(model_path, examples, out_dir, settings: SFTSettings, few_shot: bool, max_steps, overwrite,
            mixed_bf16: bool) -> SFTRun:
    """Run :func:`finetune` under ``accelerate launch`` (one process per GPU); returns rank 0's result."""
    import tempfile

    import torch

    if torch.cuda.device_count() < settings.num_gpus:
        raise SFTLaunchError(f"num_gpus: {settings.num_gpus} but {torch.cuda.device_count()} CUDA device(s) "
                             "are visible to this step")
    with tempfile.TemporaryDirectory(prefix="medmerge-sft-job-") as work:
        job = Path(work) / "job.json"
        job.write_text(json.dumps({
            "model_path": str(model_path), "examples": [e.model_dump() for e in examples], "out_dir": str(out_dir),
            "settings": settings.model_dump(mode="json"), "few_shot": few_shot, "max_steps": max_steps,
            "overwrite": overwrite, "result": str(Path(work) / "result.json")}))
        done = subprocess.run(accelerate_command(settings, job, mixed_bf16))
        if done.returncode != 0:
            raise SFTLaunchError(f"accelerate launch ({settings.num_gpus} processes, {settings.distributed}) "
                                 f"exited {done.returncode}; its output is above")
        return SFTRun.from_json(json.loads((Path(work) / "result.json").read_text()))


def finetune(model_path: str | Path, examples: Sequence[GenerationExample], out_dir: str | Path,
             settings: SFTSettings = SFTSettings(), few_shot: bool = True, max_steps: int | None = None,
             overwrite: bool = False) -> SFTRun:
    """Fine-tune ``model_path`` on ``examples``; write the full checkpoint to ``out_dir``; say what it did.

    ``max_steps`` overrides the computed step count (tests and smoke runs). Refuses (exit 2) a setting whose
    memory estimate exceeds the device.
    """
    import tempfile
    import time

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from medmerge.errors import OutputError
    from medmerge.io.atomic import atomic_dir, refuse_aliased_output
    from medmerge.merge.precision import torch_dtype

    refuse_aliased_output(out_dir, [model_path], "model to fine-tune")  # before training, whatever overwrite says
    if Path(out_dir).exists() and not overwrite:  # before training, not after it
        raise OutputError(f"output directory {out_dir} already exists (pass overwrite=True to replace it)")
    dtype, bf16 = plan_precision(model_path, settings)
    distributed = _distributed()
    if not distributed:  # the launcher checked it for every rank
        est = check_memory(model_path, settings, dtype, bf16)
        if settings.num_gpus > 1:
            return _launch(model_path, examples, out_dir, settings, few_shot, max_steps, overwrite, bf16)
    else:
        est = None
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token or ""
    rows = [{"prompt": prompt_for(e, tokenizer, settings.instruction), "completion": e.target + eos}
            for e in examples]
    steps = max_steps or optimisation_steps(len(rows), settings, few_shot)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype))
    peft_config = None
    if settings.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, task_type="CAUSAL_LM",
                                 target_modules="all-linear")
    with tempfile.TemporaryDirectory(prefix="medmerge-sft-") as work:
        args = SFTConfig(
            output_dir=work, max_steps=steps, learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.per_device_batch, gradient_accumulation_steps=settings.grad_accum,
            max_length=settings.max_length, completion_only_loss=True, seed=settings.seed, data_seed=settings.seed,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, gradient_checkpointing=settings.gradient_checkpointing, bf16=bf16,
            logging_nan_inf_filter=False,   # the Trainer would log a NaN loss as the mean of the earlier ones
            optim={"adamw_8bit": "adamw_bnb_8bit"}.get(settings.optim, settings.optim),
        )
        what = f"{model_path} into {out_dir}"
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[finite_training_callback(what)])
        result = trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if distributed:
            _save_distributed(trainer, model_path, tokenizer, out_dir, settings, dtype, overwrite, work)
        else:
            trained: Any = trainer.model   # a PreTrainedModel, or a PeftModel with LoRA
            if settings.lora:
                trained = trained.merge_and_unload()
            check_finite_weights(trained, what)   # the last step's update is logged by no later loss
            with atomic_dir(out_dir, overwrite=overwrite) as tmp:
                trained.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    seconds = time.perf_counter() - t0
    return SFTRun(steps=steps, train_loss=result.training_loss, out_dir=str(out_dir),
                  first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None, losses=losses,
                  dtype=dtype, memory_estimate_gib=None if est is None else est.per_device / 2 ** 30,
                  seconds=seconds, train_seconds=result.metrics.get("train_runtime"),
                  samples_per_second=result.metrics.get("train_samples_per_second"))


def _save_distributed(trainer, model_path, tokenizer, out_dir, settings: SFTSettings, dtype: str,
                      overwrite: bool, work: str) -> None:
    """Every rank takes part in gathering the sharded weights; rank 0 writes the full checkpoint."""
    from medmerge.io.atomic import atomic_dir

    gathered = Path(work) / "gathered"
    trainer.save_model(str(gathered))  # FSDP FULL_STATE_DICT / ZeRO-3 16-bit: gathered on rank 0
    if not trainer.is_world_process_zero():
        return
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if settings.lora:  # the adapter was saved: merge it into the base on rank 0
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            from medmerge.merge.precision import torch_dtype

            base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(dtype))
            PeftModel.from_pretrained(base, str(gathered)).merge_and_unload().save_pretrained(tmp)
        else:
            for f in gathered.iterdir():
                if f.is_file() and not f.name.startswith("training_args"):
                    f.rename(Path(tmp) / f.name)
        tokenizer.save_pretrained(tmp)


def _main(argv: list[str]) -> int:
    """One process of a distributed SFT: ``python -m medmerge.finetune.sft JOB.json`` (under ``accelerate launch``)."""
    job = json.loads(Path(argv[0]).read_text())
    res = finetune(job["model_path"], [GenerationExample(**e) for e in job["examples"]], job["out_dir"],
                   SFTSettings(**job["settings"]), few_shot=job["few_shot"], max_steps=job["max_steps"],
                   overwrite=job["overwrite"])
    if int(os.environ.get("RANK", "0")) == 0:
        Path(job["result"]).write_text(json.dumps(res.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
