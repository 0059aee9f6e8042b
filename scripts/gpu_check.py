"""The GPU check (scripts/gpu_check.sh): medmerge's hardware paths on one CUDA GPU, in bf16.

A random ~0.5B Llama pair (A, and B = A + noise, saved in bfloat16) -> a 5-ratio linear sweep
evaluated in memory on the packaged clinical sample -> SFT of A for 20 steps on the packaged
MTS-Dialog sample -> 16 generations. Prints tokens/s for evaluation and generation, samples/s for
SFT, and the peak GPU memory of each phase; writes the figures to OUT/gpu_check.json.

Without CUDA it refuses (exit 2) unless ``--device cpu`` is given; ``--device cpu --tiny`` runs the
same phases on a tiny model on a CPU in about a minute (what the test suite runs), and ``--dry-run``
builds the models and prints the plan without evaluating, training or generating.

Random weights: the scores are noise; the check measures speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# ~0.5B parameters: 28 layers of hidden 1024 / MLP 4096 (0.43B) and an untied 32000-token vocabulary (0.07B)
FULL = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=4, head_dim=64, vocab=32000, context=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab=2000, context=1024)


def parse(argv):
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny model instead of ~0.5B (a quick CPU run)")
    p.add_argument("--dry-run", action="store_true", help="build the models, print the plan, run nothing")
    p.add_argument("--out", default="gpu_check_out", help="working directory (models, report)")
    p.add_argument("--ratios", type=int, default=5)
    p.add_argument("--limit", type=int, default=16, help="documents per clinical task")
    p.add_argument("--steps", type=int, default=20, help="SFT optimisation steps")
    p.add_argument("--generations", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--workers", type=int, default=None,
                   help="also evaluate the sweep on this many local workers (medmerge.runtime.workers), one GPU each; "
                        "default: 2 when 2 or more GPUs are visible, else none")
    return p.parse_args(argv)


def refuse_without_cuda(device: str) -> str | None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return ("gpu_check: no CUDA device (torch.cuda.is_available() is False, torch "
                f"{torch.__version__}): this check runs on a GPU in bf16. For its CPU-side setup only: "
                "scripts/gpu_check.sh --device cpu --tiny")
    return None


def build_pair(out: Path, shape: dict, device: str) -> tuple[Path, Path, int]:
    """A random Llama A and B = A + noise, saved in bfloat16 with a BPE tokenizer trained on the demo corpus."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from medmerge.demo import _tokenizer_texts
    from medmerge.demo.tokenizer import train_tokenizer

    tok = train_tokenizer(_tokenizer_texts("clinical") + _tokenizer_texts("general"), vocab_size=shape["vocab"])
    tok.model_max_length = shape["context"]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=shape["hidden_size"],
                      intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_hidden_layers"],
                      num_attention_heads=shape["num_attention_heads"],
                      num_key_value_heads=shape["num_key_value_heads"], head_dim=shape["head_dim"],
                      max_position_embeddings=shape["context"], tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device if device.startswith("cuda") else "cpu"):
        model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    paths = []
    for name, noise in (("a", 0.0), ("b", 0.02)):
        d = out / "models" / name
        if noise:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * noise)
        model.to(torch.bfloat16).save_pretrained(d)   # config.json says dtype: bfloat16
        tok.save_pretrained(d)
        paths.append(d)
    del model
    return paths[0], paths[1], n


class TokenCounter:
    """Counts the tokens every *ForCausalLM forward pass computes logits for (a global forward hook)."""

    def __init__(self):
        import torch

        self.tokens = 0
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if type(module).__name__.endswith("ForCausalLM") and getattr(output, "logits", None) is not None:
            self.tokens += int(output.logits.shape[0] * output.logits.shape[1])

    def close(self):
        self._handle.remove()


def phase(name: str, fn, device: str):
    """Run ``fn``; return (its result, seconds, peak GPU MiB or None)."""
    import torch

    from medmerge.runtime import cost

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    c = cost.begin(f"gpu_check.{name}")
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    cost.end(c)
    return result, c.wall_seconds, None if c.peak_gpu_bytes is None else c.peak_gpu_bytes / 2 ** 20


def scale_out(spec, args, workers: int, out: Path, one_worker_seconds: float) -> dict:
    """The same sweep on ``workers`` local worker processes (each its own GPU, medmerge.runtime.workers), with a fresh
    evaluation cache: wall time, the ratio to one worker and the per-candidate time each worker saw."""
    import tempfile

    from medmerge.evaluation.cache import EvalCache
    from medmerge.selection.parallel_search import evaluate_grid
    from medmerge.selection.search import SearchConfig

    cfg = SearchConfig(sweep=spec.model_dump(mode="json"), suites=("clinical",), data_dir="sample", limit=args.limit,
                       objectives=("mm_pubmedqa", "medical_avg"),   # the clinical suite's (no IFEval here)
                       batch_size=16, device=args.device, dtype="auto", output_dir=str(out / "scale_out"),
                       workers=workers)
    with tempfile.TemporaryDirectory(prefix="gpu-check-cache-") as tmp:
        t0 = time.perf_counter()
        pairs = evaluate_grid(cfg, EvalCache(tmp), workers)
        secs = time.perf_counter() - t0
    per = sum(r.seconds for _, r in pairs) / len(pairs)
    return {"workers": workers, "candidates": len(pairs), "seconds": secs, "ratio": secs / one_worker_seconds,
            "seconds_per_candidate": per, "one_worker_seconds": one_worker_seconds}


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    msg = refuse_without_cuda(args.device)
    if msg:
        print(msg, file=sys.stderr)
        return 2
    import torch

    from medmerge.evaluation.runner import EvalSettings
    from medmerge.evaluation.sweep_eval import evaluate_sweep
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.generation.data import load_task
    from medmerge.generation.generate import GenerationSettings, generate
    from medmerge.merge.recipe import SweepSpec
    from medmerge.finetune.sft import SFTSettings, finetune

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = TINY if args.tiny else FULL
    t0 = time.perf_counter()
    a, b, n_params = build_pair(out, shape, args.device)
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (CPU)"
    ratios = tuple(round(i / (args.ratios - 1), 4) for i in range(args.ratios)) if args.ratios > 1 else (0.5,)
    print(f"gpu_check: {n_params / 1e9:.3f}B-parameter random Llama pair in {time.perf_counter() - t0:.1f} s "
          f"({out / 'models'}); device {args.device}, GPU {gpu}, torch {torch.__version__}")
    print(f"  plan: linear sweep at ratios {list(ratios)} evaluated in memory (clinical sample, limit {args.limit}); "
          f"SFT {args.steps} steps; {args.generations} generations of up to {args.max_new_tokens} tokens")
    if args.dry_run:
        print("  dry run: nothing evaluated, trained or generated")
        return 0

    report: dict = {"date": time.strftime("%Y-%m-%d"), "device": args.device, "gpu": gpu, "params": n_params,
                    "torch": torch.__version__}
    counter = TokenCounter()
    settings = EvalSettings(suites=("clinical",), data_dir=resolve_data_dir("sample"), limit=args.limit,
                            batch_size=16, device=args.device, dtype="auto")
    spec = SweepSpec(clinical=str(a), instruct=str(b), methods=("linear",), ratios=ratios)
    reports, secs, peak = phase("evaluate", lambda: list(evaluate_sweep(spec, settings, None, quiet=True)),
                                args.device)
    report["evaluate"] = {"candidates": len(reports), "seconds": secs, "tokens": counter.tokens,
                          "tokens_per_second": counter.tokens / secs, "peak_gpu_mib": peak,
                          "dtype": reports[0][1].settings["dtype"]}
    counter.close()
    workers = args.workers if args.workers is not None else \
        (2 if args.device == "cuda" and torch.cuda.device_count() >= 2 else 1)
    if workers > 1:
        report["evaluate_workers"] = scale_out(spec, args, workers, out, secs)

    train = load_task("mts_dialog", "train", data_dir=resolve_data_dir("sample"))
    held = load_task("mts_dialog", "test", data_dir=resolve_data_dir("sample"))[:args.generations]
    sft = SFTSettings(per_device_batch=4, grad_accum=1, max_length=min(1024, shape["context"]),
                      learning_rate=1e-5, gradient_checkpointing=True)
    res, secs, peak = phase("sft", lambda: finetune(a, train, out / "sft", sft, max_steps=args.steps,
                                                     overwrite=True), args.device)
    report["sft"] = {"steps": res.steps, "seconds": secs, "samples_per_second": res.samples_per_second,
                     "peak_gpu_mib": peak, "dtype": res.dtype, "memory_estimate_gib": res.memory_estimate_gib}

    from medmerge.evaluation.runner import load_model

    model, tok = load_model(out / "sft", args.device, dtype="auto")
    gen_settings = GenerationSettings(batch_size=16, max_new_tokens=args.max_new_tokens)
    gens, secs, peak = phase("generate", lambda: generate(model, tok, held, gen_settings, progress=False), args.device)
    report["generate"] = {"sequences": len(gens.predictions), "new_tokens": gens.new_tokens, "seconds": secs,
                          "tokens_per_second": gens.new_tokens / secs, "peak_gpu_mib": peak,
                          "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    report["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() / 2 ** 20) if args.device.startswith("cuda") \
        else None

    def mib(v):
        return "-" if v is None else f"{v:,.0f} MiB"

    e, s, g = report["evaluate"], report["sft"], report["generate"]
    print(f"evaluation  {e['tokens_per_second']:10,.0f} tokens/s   ({e['tokens']:,} tokens, {e['candidates']} "
          f"candidates, {e['seconds']:.1f} s, {e['dtype']}), peak GPU {mib(e['peak_gpu_mib'])}")
    print(f"SFT         {s['samples_per_second']:10,.2f} samples/s  ({s['steps']} steps, {s['seconds']:.1f} s, "
          f"{s['dtype']}, estimate {s['memory_estimate_gib']:.2f} GiB), peak GPU {mib(s['peak_gpu_mib'])}")
    print(f"generation  {g['tokens_per_second']:10,.0f} tokens/s   ({g['new_tokens']:,} new tokens, "
          f"{g['sequences']} sequences, {g['seconds']:.1f} s, {g['dtype']}), peak GPU {mib(g['peak_gpu_mib'])}")
    if "evaluate_workers" in report:
        w = report["evaluate_workers"]
        print(f"evaluation on {w['workers']} workers: {w['seconds']:.1f} s for {w['candidates']} candidates "
              f"({w['ratio']:.2f}x the one-worker time; {w['seconds_per_candidate']:.1f} s per candidate per worker)")
    print(f"peak GPU memory (whole check): {mib(report['peak_gpu_mib'])}")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
