"""How much memory an SFT setting needs, checked before any weight is loaded.

For ``P`` parameters of which ``T`` are trained (all of them; or, with LoRA, only the adapters,
``r · (in + out)`` per linear layer except the output head), ``b`` bytes per weight (4 for
float32, 2 for bfloat16/float16) and ``t`` bytes per trained parameter (``b``; LoRA adapters are
kept in float32 by PEFT, so 4):

    weights      = P · b
    gradients    = T · t
    optimiser    = T · s      s = 2 · t (AdamW: two states in the parameter's dtype),
                              2 (8-bit AdamW: two 1-byte states); paged variants page their
                              states out to host RAM, so they are not counted against the GPU
    activations  per device and micro-batch (B sequences of S tokens, a bytes per activation:
                 2 under bf16/fp16 compute, else 4; L layers, hidden H, MLP width I, vocabulary V):
                   without gradient checkpointing  L · B · S · (10·H + 4·I) · a
                   with it                         L · B · S · H · a  +  B · S · (10·H + 4·I) · a
                 plus the logits and their float32 copy for the loss,  B · S · V · (a + 4)

With ``num_gpus = N > 1`` (FSDP or DeepSpeed ZeRO-3) weights, gradients and optimiser states are
sharded: each GPU holds ``(weights + gradients + optimiser) / N + activations``.

The ``10·H + 4·I`` per token and layer counts what a Llama-style block keeps for its backward
pass (norm inputs and outputs, q/k/v and attention outputs, the residual; gate, up, activation and
product in the MLP), with SDPA/flash attention (no S×S score matrix). It is a floor, not a promise:
allocator fragmentation, the CUDA context and temporary buffers come on top. A setting whose floor
exceeds the device is refused (:class:`SFTMemoryError`, exit 2) with the settings that would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from medmerge.errors import MedmergeError

GIB = 2 ** 30
OPTIMISERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")


class SFTMemoryError(MedmergeError):
    """The SFT setting cannot fit the device it would run on."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its parameter counts and the sizes activations scale with."""

    params: int            # every parameter once (tied embeddings once)
    lora_params: int       # adapter parameters for LoRA rank 1 on every linear layer but the head
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def from_checkpoint(cls, path: str | Path, trust_remote_code: bool = False) -> ModelShape:
        """Count the parameters of ``path``'s ``config.json`` on the meta device: nothing is allocated
        or downloaded for the weights, so an 8B config is counted in a second."""
        from transformers import AutoConfig

        p = Path(path)
        if str(path).startswith(("/", ".", "~")) or p.exists():   # a local path: say what is wrong with it
            if not p.exists():
                raise SFTMemoryError(f"model {path}: no such directory")
            if not (p / "config.json").is_file():
                raise SFTMemoryError(f"model {path}: no config.json in it (a checkpoint directory is needed)")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:   # a hub id that cannot be fetched, a config.json without model_type
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SFTMemoryError(f"model {path}: cannot read its config ({first})") from None
        return cls.from_config(config, trust_remote_code=trust_remote_code)

    @classmethod
    def from_config(cls, config, trust_remote_code: bool = False) -> ModelShape:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        params = sum(p.numel() for p in model.parameters())
        head = model.get_output_embeddings()
        lora = sum(m.in_features + m.out_features for m in model.modules()
                   if isinstance(m, torch.nn.Linear) and m is not head)
        text = getattr(config, "text_config", None) or config
        hidden = int(text.hidden_size)
        return cls(params=params, lora_params=lora, layers=int(text.num_hidden_layers), hidden=hidden,
                   intermediate=int(getattr(text, "intermediate_size", None) or 4 * hidden),
                   vocab=int(text.vocab_size))


@dataclass(frozen=True)
class MemorySetting:
    """The SFT choices the estimate depends on (a view of :class:`medmerge.finetune.sft.SFTSettings`)."""

    dtype: str = "float32"                 # resolved: float32, bfloat16 or float16
    mixed_bf16: bool = False               # bf16 autocast over float32 weights (activations in 16 bits)
    lora: bool = False
    lora_r: int = 16
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = True
    per_device_batch: int = 4
    max_length: int = 8192
    num_gpus: int = 1

    def describe(self) -> str:
        parts = [f"dtype {self.dtype}" + (" + bf16 autocast" if self.mixed_bf16 else ""),
                 f"lora r={self.lora_r}" if self.lora else "full fine-tuning", f"optim {self.optim}",
                 "gradient checkpointing" if self.gradient_checkpointing else "no gradient checkpointing",
                 f"batch {self.per_device_batch} x {self.max_length} tokens"]
        if self.num_gpus > 1:
            parts.append(f"{self.num_gpus} GPUs, sharded")
        return ", ".join(parts)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimiser: int
    activations: int
    paged_optimiser: bool
    num_gpus: int

    @property
    def per_device(self) -> int:
        """Bytes one device must hold (optimiser states of a paged optimiser excluded)."""
        sharded = self.weights + self.gradients + (0 if self.paged_optimiser else self.optimiser)
        return -(-sharded // self.num_gpus) + self.activations

    def breakdown(self) -> str:
        opt = f"optimiser {gib(self.optimiser)}" + (" (paged to host RAM)" if self.paged_optimiser else "")
        shard = f" / {self.num_gpus} GPUs" if self.num_gpus > 1 else ""
        return (f"weights {gib(self.weights)}, gradients {gib(self.gradients)}, {opt}{shard}, "
                f"activations {gib(self.activations)}")


def gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB"


def estimate(shape: ModelShape, s: MemorySetting) -> MemoryEstimate:
    """The formulas of the module docstring, in bytes."""
    if s.optim not in OPTIMISERS:
        raise SFTMemoryError(f"optim {s.optim!r} is not one of {', '.join(OPTIMISERS)}")
    b = 4 if s.dtype == "float32" else 2
    trained = shape.lora_params * s.lora_r if s.lora else shape.params
    t = 4 if s.lora else b
    state = {"adamw_torch": 2 * t, "paged_adamw_32bit": 2 * 4, "adamw_8bit": 2, "paged_adamw_8bit": 2}[s.optim]
    a = 2 if (s.dtype != "float32" or s.mixed_bf16) else 4
    tokens = s.per_device_batch * s.max_length
    per_layer = (10 * shape.hidden + 4 * shape.intermediate) * a
    if s.gradient_checkpointing:
        acts = shape.layers * tokens * shape.hidden * a + tokens * per_layer
    else:
        acts = shape.layers * tokens * per_layer
    acts += tokens * shape.vocab * (a + 4)
    return MemoryEstimate(weights=shape.params * b, gradients=trained * t, optimiser=trained * state,
                          activations=acts, paged_optimiser=s.optim.startswith("paged_"), num_gpus=s.num_gpus)


@dataclass(frozen=True)
class Device:
    """Where SFT runs and how many bytes one device offers (a GPU's memory; for a CPU the available RAM)."""

    kind: str             # "cuda" or "cpu"
    bytes: int
    name: str

    @classmethod
    def detect(cls, memory_gib: float | None = None) -> Device:
        """The first CUDA GPU (its total memory), else the CPU (RAM available now); ``memory_gib``
        overrides the size (a GPU shared with something else, or a test)."""
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            size = props.total_memory
            name = f"GPU {props.name}"
        else:
            import psutil

            size = psutil.virtual_memory().available
            name = "CPU (available RAM)"
        if memory_gib is not None:
            size = int(memory_gib * GIB)
            name += " (device_memory_gib setting)"
        return cls(kind="cuda" if torch.cuda.is_available() else "cpu", bytes=size, name=name)


def alternatives(shape: ModelShape, s: MemorySetting, device: Device, max_gpus: int = 64) -> list[tuple[str, int]]:
    """Settings near ``s`` that fit ``device``: ``[(what to set, bytes per device)]``, simplest first."""
    tries: list[tuple[str, MemorySetting]] = []
    if s.dtype == "float32":
        tries.append(("dtype: bfloat16", replace(s, dtype="bfloat16", mixed_bf16=False)))
    if not s.gradient_checkpointing:
        tries.append(("gradient_checkpointing: true", replace(s, gradient_checkpointing=True)))
    if s.optim != "adamw_8bit":
        tries.append(("optim: adamw_8bit", replace(s, optim="adamw_8bit")))
    if s.optim != "paged_adamw_8bit":
        tries.append(("optim: paged_adamw_8bit", replace(s, optim="paged_adamw_8bit")))
    if not s.lora:
        tries.append(("lora: true", replace(s, lora=True)))
    if s.per_device_batch > 1:
        tries.append((f"per_device_batch: 1 (grad_accum x{s.per_device_batch})", replace(s, per_device_batch=1)))
    lean = replace(s, dtype="bfloat16", mixed_bf16=False, gradient_checkpointing=True)
    tries += [("dtype: bfloat16 + lora: true", replace(lean, lora=True)),
              ("dtype: bfloat16 + optim: paged_adamw_8bit", replace(lean, optim="paged_adamw_8bit")),
              ("dtype: bfloat16 + lora: true + per_device_batch: 1", replace(lean, lora=True, per_device_batch=1))]
    out, seen = [], set()
    for label, alt in tries:
        need = estimate(shape, alt).per_device
        if alt != s and need <= device.bytes and label not in seen:
            seen.add(label)
            out.append((label, need))
    if device.kind == "cuda":  # the same setting sharded over more GPUs of this size
        for n in range(max(2, s.num_gpus + 1), max_gpus + 1):
            need = estimate(shape, replace(s, num_gpus=n)).per_device
            if need <= device.bytes:
                out.append((f"num_gpus: {n} (FSDP)", need))
                break
    return out


def check_fits(shape: ModelShape, s: MemorySetting, device: Device) -> MemoryEstimate:
    """The estimate, or :class:`SFTMemoryError` naming both numbers and the settings that would fit."""
    est = estimate(shape, s)
    if est.per_device <= device.bytes:
        return est
    fits = alternatives(shape, s, device)
    hint = ("; settings that would fit: " + "; ".join(f"{label} (~{gib(n)})" for label, n in fits)) if fits else \
        "; no nearby setting fits this device: use more or larger GPUs (num_gpus with FSDP)"
    per = " per GPU" if s.num_gpus > 1 else ""
    raise SFTMemoryError(
        f"SFT of a {shape.params / 1e9:.2f}B-parameter model needs about {gib(est.per_device)}{per} "
        f"({est.breakdown()}; {s.describe()}) but the {device.name} has {gib(device.bytes)}{hint}")
