"""Architecture facts for head alignment, read from data (``resources/architectures.yaml``).

:func:`attention_layout` turns one checkpoint (its ``config.json`` and tensor shapes) into a
:class:`ModelLayout`: for every tensor that needs more than element-wise treatment, which
logical parts it holds (a fused ``qkv_proj`` is three: q, k, v), each part's rows, and each
part's head role. Head counts and ``head_dim`` come from ``config.json``. Every attention tensor
is checked against the table and the config before anything is read, so an architecture or
tensor layout the table does not know is a :class:`CompatibilityError` naming both, raised at
planning time, never a traceback mid-merge or a silent unaligned merge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import yaml

from medmerge.errors import CompatibilityError

ROLES = ("q", "k", "v", "o")
SHARED = "shared"


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    layers: str
    module: str
    config: dict[str, str]
    attention: dict[str, tuple[str, ...]]     # name relative to the module -> roles (several if fused)
    split: dict[str, tuple[str, ...]]         # name relative to the layer -> config keys of each part's rows


@lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    """Every family in the table, keyed by family name."""
    data = yaml.safe_load((files("medmerge") / "resources" / "architectures.yaml").read_text())
    d = data["defaults"]
    out = {}
    for name, f in data["families"].items():
        out[name] = Family(
            name=name, architectures=tuple(f["architectures"]), layers=f.get("layers", d["layers"]),
            module=f.get("module", d["module"]), config={**d["config"], **f.get("config", {})},
            attention={k: tuple(v) if isinstance(v, list) else (v,) for k, v in f["attention"].items()},
            split={k: tuple(v) for k, v in (f.get("split") or {}).items()},
        )
    return out


def family_of(config: dict) -> Family | None:
    """The family whose ``architectures`` hold the config's; without ``architectures``, the family
    named after its ``model_type``."""
    archs = config.get("architectures") or []
    if not archs:
        return families().get(str(config.get("model_type")))
    for fam in families().values():
        if any(a in fam.architectures for a in archs):
            return fam
    return None


@dataclass(frozen=True)
class Part:
    """One logical tensor inside a stored tensor: rows ``[start, stop)`` (the whole tensor when not fused)."""

    role: str | None            # q, k, v, o (head-structured), or None (merged element-wise)
    start: int
    stop: int


@dataclass(frozen=True)
class TensorLayout:
    name: str
    layer: str                  # the layer prefix, e.g. ``model.layers.3``
    parts: tuple[Part, ...]
    fused: bool                 # stored as several parts along rows

    @property
    def is_heads(self) -> bool:
        return any(p.role in ROLES for p in self.parts)


@dataclass
class ModelLayout:
    """Where the heads are in one checkpoint."""

    architecture: str
    n_heads: int
    n_kv_heads: int
    head_dim: int
    tensors: dict[str, TensorLayout] = field(default_factory=dict)     # structured tensors only
    # layer -> role -> (tensor name, Part) of the 2-D weight holding that role's heads
    weights: dict[str, dict[str, tuple[str, Part]]] = field(default_factory=dict)


def _architecture_name(config: dict) -> str:
    archs = config.get("architectures") or []
    return archs[0] if archs else f"model_type={config.get('model_type')!r}"


def _first_attention_tensor(shapes: dict[str, tuple[int, ...]]) -> str:
    """The first attention weight matrix (what alignment would have to split), else the first tensor."""
    attn = [n for n, s in shapes.items() if re.search(r"attn|attention|\.(q|k|v|qkv|o)_proj\.", n)]
    matrices = [n for n in attn if len(shapes[n]) == 2]
    return (matrices or attn or list(shapes) or ["(no tensors)"])[0]


def attention_layout(config: dict, shapes: dict[str, tuple[int, ...]], method: str = "hierarchical_ot") -> ModelLayout:
    """The head layout of a checkpoint with this ``config.json`` and these tensor shapes.

    Raises :class:`CompatibilityError` naming the architecture and the tensor when the table does
    not know the architecture, a tensor of an attention module, or a shape disagrees with the config.
    """
    arch = _architecture_name(config)
    fam = family_of(config)
    if fam is None:
        known = ", ".join(a for f in families().values() for a in f.architectures)
        raise CompatibilityError(
            f"{method} does not know the attention layout of architecture {arch} (tensor "
            f"{_first_attention_tensor(shapes)}); known architectures: {known}")
    keys = fam.config

    def need(key: str) -> int:
        value = config.get(keys[key])
        if not isinstance(value, int) or value <= 0:
            raise CompatibilityError(f"architecture {arch}: config.json lacks a positive {keys[key]}")
        return value

    n_heads = need("heads")
    n_kv = config.get(keys["kv_heads"]) or n_heads
    head_dim = config.get(keys["head_dim"]) or need("hidden") // n_heads
    if n_heads % n_kv:
        raise CompatibilityError(f"architecture {arch}: {keys['heads']}={n_heads} is not a multiple of "
                                 f"{keys['kv_heads']}={n_kv}")
    layout = ModelLayout(architecture=arch, n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim)
    rows_of = {"q": n_heads * head_dim, "k": n_kv * head_dim, "v": n_kv * head_dim}
    layer_re = re.compile(rf"^(?P<layer>{re.escape(fam.layers)}\.\d+)\.(?P<rel>.+)$")
    module = fam.module + "."

    for name, shape in shapes.items():
        m = layer_re.match(name)
        if m is None:
            continue
        layer, rel = m.group("layer"), m.group("rel")
        if rel in fam.split:
            given = [config.get(k) for k in fam.split[rel]]
            sizes = [s for s in given if isinstance(s, int)]
            if len(sizes) != len(given) or not shape or sum(sizes) != shape[0]:
                raise CompatibilityError(
                    f"architecture {arch}: tensor {name} has shape {list(shape)}, not the "
                    f"{' + '.join(f'{k}' for k in fam.split[rel])} rows the table expects")
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            layout.tensors[name] = TensorLayout(name, layer, tuple(Part(None, s, s + n) for s, n in zip(starts, sizes)),
                                                fused=True)
            continue
        if not rel.startswith(module):
            continue
        roles = fam.attention.get(rel[len(module):])
        if roles is None:
            raise CompatibilityError(
                f"{method} does not know the layout of tensor {name} in architecture {arch} "
                f"(known in {fam.module}: {', '.join(fam.attention)})")
        if roles == (SHARED,):
            if tuple(shape) != (head_dim,):
                raise CompatibilityError(f"architecture {arch}: tensor {name} has shape {list(shape)}, "
                                         f"expected [head_dim={head_dim}] (one weight shared by all heads)")
            continue
        bad = [r for r in roles if r not in ROLES] + [r for r in ("o", SHARED) if r in roles and len(roles) > 1]
        if bad:
            raise CompatibilityError(f"architecture table: unknown role {bad[0]!r} for {fam.name} {rel}")
        is_bias = len(shape) == 1
        if len(shape) not in (1, 2):
            raise CompatibilityError(f"architecture {arch}: tensor {name} has shape {list(shape)}, expected 1 or 2 dims")
        if roles == ("o",):
            if is_bias:  # o_proj's bias lives in hidden space: no heads in it, merged element-wise
                continue
            expected = n_heads * head_dim
            if shape[1] != expected:
                raise CompatibilityError(
                    f"architecture {arch}: tensor {name} has shape {list(shape)}, expected {expected} columns "
                    f"({keys['heads']}={n_heads} x head_dim={head_dim})")
            parts: tuple[Part, ...] = (Part("o", 0, shape[0]),)
        else:
            sizes = [rows_of[r] for r in roles]
            if shape[0] != sum(sizes):
                detail = " + ".join(f"{r}: {rows_of[r] // head_dim} heads x {head_dim}" for r in roles)
                raise CompatibilityError(
                    f"architecture {arch}: tensor {name} has shape {list(shape)}, expected {sum(sizes)} rows ({detail})")
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            parts = tuple(Part(r, s, s + n) for r, s, n in zip(roles, starts, sizes))
        layout.tensors[name] = TensorLayout(name, layer, parts, fused=len(parts) > 1)
        if not is_bias:
            for p in parts:
                if p.role is not None:   # head-structured parts only (a fused split has none)
                    layout.weights.setdefault(layer, {})[p.role] = (name, p)

    for layer, have in layout.weights.items():
        missing = [r for r in ROLES if r not in have]
        if missing:
            raise CompatibilityError(f"architecture {arch}: layer {layer} has no {missing[0]} projection weight "
                                     f"the table names (known: {', '.join(fam.attention)})")
    for t in layout.tensors.values():
        if t.is_heads and t.layer not in layout.weights:
            raise CompatibilityError(f"architecture {arch}: tensor {t.name} has no projection weights in its layer")
    return layout


# --- the context length ------------------------------------------------------------------------------

POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
_UNKNOWN_MAX_LENGTH = 10**9   # transformers reports int(1e30) when a tokenizer does not know its context


def context_length(config: Any = None, tokenizer: Any = None) -> int | None:
    """The longest sequence a model takes, in tokens: the smaller of its config's ``max_position_embeddings``
    (or the first alias of :data:`POSITION_KEYS` it has) and the tokenizer's ``model_max_length`` (unless it is
    transformers' 'unknown' sentinel); None when neither is known.

    ``config`` is a transformers config, a model's ``config.json`` as a mapping, or None; without a tokenizer
    only the config counts. ``medmerge validate-data --tokenizer``, the finetune pipeline's data check and its
    generation cap, and the evaluation (config only: its cache keys need no tokenizer) all ask this."""
    known = []
    mml = getattr(tokenizer, "model_max_length", None)
    if isinstance(mml, int) and 0 < mml < _UNKNOWN_MAX_LENGTH:
        known.append(mml)
    for key in POSITION_KEYS:
        v = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and 0 < v < _UNKNOWN_MAX_LENGTH:
            known.append(v)
            break
    return min(known) if known else None
