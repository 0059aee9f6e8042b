"""Compatibility checks run before any merge; each error names the first offending thing.

Checked in order: architecture (``architectures`` and ``model_type``), vocabulary size,
tokenizer files, tensor names and shapes. Adapters (PEFT) and pickle-only checkpoints are
refused when a checkpoint is opened (:class:`medmerge.io.checkpoint.Checkpoint`). NaN/Inf
values are checked as each tensor is read by the engine, before it is merged into
anything, or up front for every tensor with ``scan_values=True`` (``medmerge check``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

from medmerge.errors import CompatibilityError
from medmerge.io.checkpoint import Checkpoint

VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")


def _tokenizer_fingerprint(ckpt: Checkpoint) -> dict[str, str]:
    """Digest of each vocabulary-defining file; for tokenizer.json only its model and added tokens count."""
    out = {}
    for fname in VOCAB_FILES:
        f = ckpt.path / fname
        if not f.exists():
            continue
        raw = f.read_bytes()
        if fname == "tokenizer.json":
            try:
                tok = json.loads(raw)
                raw = json.dumps([tok.get("model"), tok.get("added_tokens")], sort_keys=True).encode()
            except ValueError:
                pass
        out[fname] = hashlib.sha256(raw).hexdigest()
    return out


def non_finite_kind(t: torch.Tensor) -> str | None:
    """None when every value of ``t`` is finite (or it holds no floating-point values), else "NaN" or "Inf".
    ``aminmax`` propagates NaN into both results and shows ±Inf as an extreme, so one fast reduction decides;
    the element-wise pass runs only to name the kind."""
    if not t.is_floating_point() or t.numel() == 0:
        return None
    lo, hi = torch.aminmax(t)
    if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
        return None
    return "NaN" if bool(torch.isnan(t).any()) else "Inf"


def assert_finite(t: torch.Tensor, name: str, ref: str) -> None:
    """Refuse a parent tensor holding NaN or Inf."""
    kind = non_finite_kind(t)
    if kind is not None:
        raise CompatibilityError(f"tensor {name} of {ref} contains {kind} values")


def check_config(ckpt: Checkpoint) -> None:
    """A parent's config.json must name its ``architectures`` (a non-empty list of class names): without
    it neither medmerge nor mergekit can tell which tensors are which."""
    cfg = ckpt.config
    if not isinstance(cfg, dict):
        raise CompatibilityError(f"{ckpt.path / 'config.json'} is not a JSON object")
    archs = cfg.get("architectures")
    if not archs:
        raise CompatibilityError(f"{ckpt.ref}: config.json has no 'architectures' (e.g. [\"LlamaForCausalLM\"]); "
                                 f"add the model class that saved it")
    if not isinstance(archs, list) or not all(isinstance(a, str) and a for a in archs):
        raise CompatibilityError(f"{ckpt.ref}: config.json's 'architectures' must be a list of class names, "
                                 f"not {archs!r}")


def check_compatible(parents: Sequence[Checkpoint], *, scan_values: bool = False) -> None:
    """Raise :class:`CompatibilityError` naming the first difference between ``parents`` (or the first
    parent whose config does not say what it is, :func:`check_config`)."""
    for ckpt in parents:
        check_config(ckpt)
    if len(parents) < 2:
        if scan_values:
            for ckpt in parents:
                for name in ckpt.keys():
                    assert_finite(ckpt.get(name), name, ckpt.ref)
        return
    ref = parents[0]
    rc = ref.config
    for other in parents[1:]:
        oc = other.config
        for key in ("architectures", "model_type"):
            if rc.get(key) != oc.get(key):
                raise CompatibilityError(
                    f"architectures differ: {ref.ref} has {key}={rc.get(key)!r} but {other.ref} has {oc.get(key)!r}"
                )
        rv, ov = rc.get("vocab_size"), oc.get("vocab_size")
        if rv != ov:
            raise CompatibilityError(f"vocabulary sizes differ: {ref.ref} has {rv}, {other.ref} has {ov}")
    ref_tok = _tokenizer_fingerprint(ref)
    for other in parents[1:]:
        other_tok = _tokenizer_fingerprint(other)
        if ref_tok and other_tok and ref_tok != other_tok:
            differing = sorted(k for k in set(ref_tok) | set(other_tok) if ref_tok.get(k) != other_tok.get(k))
            raise CompatibilityError(
                f"tokenizers differ between {ref.ref} and {other.ref} ({', '.join(differing)})"
            )
    ref_keys = ref.keys()
    for other in parents[1:]:
        other_keys = set(other.keys())
        for name in ref_keys:
            if name not in other_keys:
                raise CompatibilityError(f"tensor {name} is missing from {other.ref}")
        extra = sorted(other_keys - set(ref_keys))
        if extra:
            raise CompatibilityError(f"tensor {extra[0]} of {other.ref} is missing from {ref.ref}")
        for name in ref_keys:
            (_, rs), (_, os_) = ref.info(name), other.info(name)
            if rs != os_:
                raise CompatibilityError(
                    f"tensor {name} has shape {list(rs)} in {ref.ref} but {list(os_)} in {other.ref}"
                )
    if scan_values:
        for ckpt in parents:
            for name in ckpt.keys():
                assert_finite(ckpt.get(name), name, ckpt.ref)
