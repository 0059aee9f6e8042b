"""The ``dtype`` setting of evaluation, generation and SFT, resolved once per model and device.

``auto`` (the default) is the checkpoint's own dtype (``dtype`` / ``torch_dtype`` in its
``config.json``) on a CUDA device that can compute in it (bfloat16 only where
``torch.cuda.is_bf16_supported()``; otherwise float16 where the checkpoint is 16-bit, else
float32), and float32 on a CPU, where 16-bit matmuls are slow and change the numbers. So on a CPU
``auto`` gives exactly the float32 results medmerge has always given. An explicit ``float32``,
``bfloat16`` or ``float16`` is used as asked, except bfloat16 on a CUDA device without it (an
error naming the device).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from medmerge.errors import MedmergeError

DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = ("auto", "float32", "bfloat16", "float16")
_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


class PrecisionError(MedmergeError, ValueError):
    """A dtype that is unknown or that the device cannot compute in."""


def normalise(name: str) -> str:
    """``bf16`` -> ``bfloat16``, ``torch.float32`` -> ``float32``; unknown names are an error."""
    n = str(name).strip().lower().removeprefix("torch.")
    n = _ALIASES.get(n, n)
    if n not in DTYPES:
        raise PrecisionError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return n


def checkpoint_dtype(config: str | Path | dict | object | None) -> str | None:
    """The dtype a checkpoint declares (``dtype``, or the older ``torch_dtype``), or None.

    ``config`` is a checkpoint directory, a ``config.json`` dict, or a transformers config object.
    """
    if config is None:
        return None
    if isinstance(config, (str, Path)):
        f = Path(config) / "config.json"
        if not f.is_file():
            return None
        config = json.loads(f.read_text())
    get = config.get if isinstance(config, dict) else lambda k: getattr(config, k, None)
    for key in ("dtype", "torch_dtype"):
        v = get(key)
        if v is not None:
            try:
                n = normalise(str(v))
            except PrecisionError:
                continue
            if n != "auto":
                return n
    return None


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def resolve_dtype(setting: str, device: str = "cpu", config=None) -> str:
    """The dtype name to load and compute in: see the module docstring for ``auto``."""
    import torch

    setting = normalise(setting)
    cuda = _is_cuda(device) and torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if setting == "auto":
        if not cuda:
            return "float32"
        declared = checkpoint_dtype(config) or "float32"
        if declared == "bfloat16" and not bf16_ok:
            return "float16"  # the checkpoint's 16 bits on a GPU without bf16 (pre-Ampere)
        return declared
    if setting == "bfloat16" and _is_cuda(device) and not bf16_ok:
        raise PrecisionError(f"dtype bfloat16: device {device} does not support bfloat16 "
                             "(use float16 or float32)")
    return setting


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[normalise(name)]
