"""Supervised fine-tuning of a (merged) checkpoint on a clinical generation task, with TRL.

Defaults follow the first seed: 15 epochs, learning rate 5e-6, effective batch 16
(per-device 4 × accumulation 4), max length 8192, and at least 200 optimisation steps for
full data or 100 for few-shot runs:

    steps = max(epochs · ceil(n / (per_device · accumulation)), min_steps)

Loss is on the completion only (TRL's prompt–completion format). ``lora=True`` trains a PEFT
LoRA adapter and merges it back, so the output is always a full checkpoint, written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, ConfigDict

from medmerge.generation.data import GenerationExample

DEFAULT_INSTRUCTION = "Write the clinical text requested for the following input."


class SFTSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    epochs: int = 15
    learning_rate: float = 5e-6
    per_device_batch: int = 4
    grad_accum: int = 4
    max_length: int = 8192
    min_steps_full: int = 200
    min_steps_few_shot: int = 100
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = True   # TRL's default: saves memory on large models, costs time on tiny ones
    bf16: bool | None = None              # None: bf16 mixed precision on a GPU that has it, fp32 on CPU
    seed: int = 0
    instruction: str = DEFAULT_INSTRUCTION


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


def finetune(model_path: str | Path, examples: Sequence[GenerationExample], out_dir: str | Path,
             settings: SFTSettings = SFTSettings(), few_shot: bool = True, max_steps: int | None = None,
             overwrite: bool = False) -> dict:
    """Fine-tune ``model_path`` on ``examples``; write the full checkpoint to ``out_dir``.

    Returns ``{"steps", "train_loss", "first_loss", "last_loss", "losses", "out_dir"}``. ``max_steps``
    overrides the computed step count (tests and smoke runs).
    """
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from medmerge.errors import OutputError
    from medmerge.io.atomic import atomic_dir

    from medmerge.io.atomic import refuse_aliased_output

    refuse_aliased_output(out_dir, [model_path], "model to fine-tune")  # before training, whatever overwrite says
    if Path(out_dir).exists() and not overwrite:  # before training, not after it
        raise OutputError(f"output directory {out_dir} already exists (pass overwrite=True to replace it)")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = tokenizer.eos_token or ""
    rows = [{"prompt": prompt_for(e, tokenizer, settings.instruction), "completion": e.target + eos}
            for e in examples]
    steps = max_steps or optimisation_steps(len(rows), settings, few_shot)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = None
    if settings.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, task_type="CAUSAL_LM",
                                 target_modules="all-linear")
    bf16 = settings.bf16
    if bf16 is None:  # TRL turns bf16 autocast on by default; on a CPU it is many times slower than fp32
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="medmerge-sft-") as work:
        args = SFTConfig(
            output_dir=work, max_steps=steps, learning_rate=settings.learning_rate,
            per_device_train_batch_size=settings.per_device_batch, gradient_accumulation_steps=settings.grad_accum,
            max_length=settings.max_length, completion_only_loss=True, seed=settings.seed, data_seed=settings.seed,
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True, gradient_checkpointing=settings.gradient_checkpointing, bf16=bf16,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=peft_config)
        result = trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        trained = trainer.model
        if settings.lora:
            trained = trained.merge_and_unload()
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            trained.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return {"steps": steps, "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "losses": losses, "out_dir": str(out_dir)}
