"""Tiny checkpoints for tests, built in milliseconds (random weights, a word-level tokenizer)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# The real public data sits beside the repository (../shared/data from its root); never an absolute
# machine path. MEDMERGE_TEST_SHARED_DATA points elsewhere (e.g. at nothing, to see what a clone without it skips).
SHARED_DATA = Path(os.environ.get("MEDMERGE_TEST_SHARED_DATA")
                   or Path(__file__).resolve().parents[1].parent / "shared" / "data")
# The evaluation and generation sample the package ships (what a clone without shared/ runs on).
PACKAGED_SAMPLE = Path(__file__).resolve().parents[1] / "medmerge" / "resources" / "eval_sample"

# The demo sweep and the evaluation settings every demo merge_search of the suite uses (conftest
# ``demo_search`` and the other demo sweeps), so the evaluation cache (``demo_eval_cache``) serves a
# candidate scored once to every later test.
DEMO_SWEEP = {"methods": ["linear", "slerp"], "ratios": [0.0, 0.5, 1.0]}
DEMO_EVAL = {"suites": ["clinical", "ifeval"], "data_dir": "sample", "limit": 4, "max_gen_toks": 32, "eps": 0.0}

WORDS = ["<unk>", "<s>", "</s>", "<pad>"] + [f"w{i}" for i in range(60)]


def llama_config(**overrides) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(WORDS),
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3,
    }
    cfg.update(overrides)
    return cfg


def write_tokenizer(d: Path, words=WORDS) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(d)


def llama_state_dict(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
    with torch.no_grad():
        for p in model.parameters():  # norms start at exactly 1; give them task-like variation too
            p.add_(torch.randn_like(p) * 0.02)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def write_checkpoint(d: Path, sd: dict[str, torch.Tensor], cfg: dict, tokenizer: bool = True) -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer:
        write_tokenizer(d)
    return d


def make_family(root: Path, n_children: int = 2, scale: float = 0.02, seed: int = 0, dtype=torch.float32,
                **cfg_overrides) -> dict[str, Path]:
    """A base and children = base + noise (task vectors), sharing config and tokenizer."""
    cfg = llama_config(**cfg_overrides)
    base = {k: v.to(dtype) for k, v in llama_state_dict(cfg, seed).items()}
    out = {"base": write_checkpoint(Path(root) / "base", base, cfg)}
    g = torch.Generator().manual_seed(seed + 1000)
    for i in range(n_children):
        child = {k: (v.float() + scale * torch.randn(v.shape, generator=g)).to(dtype) for k, v in base.items()}
        out[f"m{i}"] = write_checkpoint(Path(root) / f"m{i}", child, cfg)
    return out


def read(d: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded)."""
    d = Path(d)
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def shared_or_sample(*parts: str) -> Path:
    """The shared data directory when it holds ``parts``; without it, a failure under CI (which must
    have it) and the package's shipped sample elsewhere, so a user's clone still runs the test."""
    if all((SHARED_DATA / p).exists() for p in parts or (".",)):
        return SHARED_DATA
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import pytest

        pytest.fail(f"needs the shared data {SHARED_DATA} (../shared/data beside the repository): CI must have it",
                    pytrace=False)
    return PACKAGED_SAMPLE


def assert_read_once(reads: dict[Path, list[tuple[int, int]]], checkpoint_dir: Path) -> int:
    """Every tensor byte of the checkpoint's weight files was read exactly once (no range twice, none
    missed); ``reads`` as the ``parent_reads`` fixture records them. Returns how many reads it took."""
    from medmerge.io.checkpoint import Checkpoint, SafetensorsFile

    n = 0
    for f in Checkpoint(checkpoint_dir).weight_files:
        got = sorted(reads.get(f.resolve(), []))
        want = sorted((b, e) for _, _, b, e in SafetensorsFile(f).entries.values())
        covered = []
        for start, stop in got:  # consecutive ranges that tile the file's data section
            if covered and covered[-1][1] == start:
                covered[-1] = (covered[-1][0], stop)
            else:
                assert not covered or covered[-1][1] < start, f"{f}: bytes {start}..{covered[-1][1]} read twice"
                covered.append((start, stop))
        tiles = []
        for start, stop in want:
            if tiles and tiles[-1][1] == start:
                tiles[-1] = (tiles[-1][0], stop)
            else:
                tiles.append((start, stop))
        assert covered == tiles, f"{f}: read {covered}, tensors span {tiles}"
        n += len(got)
    return n


def greedy_continuation(checkpoint: Path, prompt: str, max_new_tokens: int) -> str:
    """What greedy decoding adds to ``prompt`` with the checkpoint's own weights and tokenizer, decoded
    as transformers' text-generation pipeline decodes it (the full text, less the prompt's decoding).
    Computed here with ``generate``, independently of any serving layer; the continuation is never empty."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1], "greedy decoding added no token"
    full = tok.decode(out[0], skip_special_tokens=True)
    return full[len(tok.decode(ids["input_ids"][0], skip_special_tokens=True)):]


def require(module: str, install: str):
    """``import module``; without it a skip naming ``install`` on a developer's clone, and a failure under CI
    (``CI=true``), whose machine ``make install`` sets up with every test dependency."""
    import importlib

    import pytest

    try:
        return importlib.import_module(module)
    except ImportError:
        reason = f"{module} is not installed ({install})"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}: CI must have it", pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def binomial_stderr(p: float, n: int) -> float:
    """The standard error of a mean of ``n`` 0/1 scores with mean ``p`` as lm-eval computes it (the sample
    standard deviation over the square root of n): sqrt(p (1 - p) / (n - 1))."""
    import math

    return math.sqrt(p * (1 - p) / (n - 1))


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content (sha256), links by target, directories by name; two
    snapshots compare a tree before and after a command."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
