"""Benchmark: a single-pass sweep against mergekit-yaml and against the I/O floor; peak RSS vs model size.

Builds random-weight Llama checkpoints locally (bf16, as real checkpoints ship), then measures,
side by side in one run:

1. ``medmerge sweep`` writing 11 linear candidates (ratios 0.0 … 1.0), hash cache cold;
2. 11 ``mergekit-yaml`` runs, one per candidate config (what a user would otherwise do);
3. the I/O floor: read both parents once and write 11 checkpoints with plain ``safetensors``;
4. start-up: the imports a sweep needs before it reads a tensor (medmerge, torch, mergekit's
   planner, which pulls in peft and transformers) against the floor's (torch, safetensors);
5. with ``--against REV``: the same sweep with the code of git revision REV (``git archive``),
   alternating with this code, ``--repeats`` times each: did the sweep get slower?
6. peak RSS of one ``medmerge merge`` for a ~0.5B and a ~2B pair.

Every command runs as a fresh process, so start-up costs count for all, and each command's time
includes the ``sync`` that puts its output on disk; outputs are deleted between phases.

    python benchmarks/merge_sweep.py              # ~0.5B sweep + 0.5B/2B RSS (about 15 min on 2 cores)
    python benchmarks/merge_sweep.py --quick      # tiny models: checks the script, numbers meaningless
    python benchmarks/merge_sweep.py --skip-rss --against 3bd3d4c   # this engine vs the one of 2026-11-23
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

BIN = Path(sys.executable).parent
SIZES = {
    # name: (hidden, intermediate, layers, heads, vocab)
    "tiny": (64, 176, 2, 4, 1000),
    "0.5B": (1024, 2816, 32, 16, 32000),
    "2B": (2048, 5632, 36, 16, 32000),
}
RATIOS = [round(i / 10, 1) for i in range(11)]


def n_params(hidden, inter, layers, heads, vocab) -> int:
    return layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + 2 * vocab * hidden + hidden


def build_llama(d: Path, size: str, seed: int) -> Path:
    """A random bf16 Llama checkpoint, written tensor by tensor (sharded at 2 GB like HF)."""
    hidden, inter, layers, heads, vocab = SIZES[size]
    if (d / "config.json").exists():
        return d
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden, hidden),
                   p + "self_attn.v_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                   p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                   p + "mlp.down_proj.weight": (hidden, inter)}
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    shard, shard_bytes, files, weight_map = {}, 0, [], {}

    def flush():
        nonlocal shard, shard_bytes
        name = f"part-{len(files)}.safetensors"
        save_file(shard, str(tmp / name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})
        shard, shard_bytes = {}, 0

    for name, shape in shapes.items():
        shard[name] = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
        shard_bytes += shard[name].numel() * 2
        if shard_bytes > 2e9:
            flush()
    if shard:
        flush()
    n = len(files)
    final = {f: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, f in enumerate(files)}
    for f, g_name in final.items():
        os.rename(tmp / f, tmp / g_name)
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: final[v] for k, v in weight_map.items()}}))
    (tmp / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "dtype": "bfloat16"}))
    os.rename(tmp, d)
    return d


def timed(cmd, env=None) -> float:
    """Wall time of ``cmd`` until its output is on disk (the sync after it is counted).

    Without the trailing sync, a phase of many short processes would leave each run's dirty
    pages to be flushed between runs, off the clock, while one long process writing the same
    bytes is throttled by the kernel's dirty-page limit inside its own time.
    """
    subprocess.run(["sync"])
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["sync"])
    return time.perf_counter() - t0


def peak_rss_mib(cmd, env=None) -> float:
    """Peak resident memory of a child process (ru_maxrss of its own wrapper's children)."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
               "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, *map(str, cmd)], check=True, env=env,
                         capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


IO_FLOOR = """
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
a, b, out, k = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
parents = [{n: t for f in sorted(p.glob('*.safetensors')) for n, t in load_file(str(f)).items()} for p in (a, b)]
for i in range(k):
    d = out / f'c{i}'
    d.mkdir(parents=True)
    save_file(parents[0], str(d / 'model.safetensors'), metadata={'format': 'pt'})
"""


STARTUP_SWEEP = ("import medmerge.cli, medmerge.merge.engine, medmerge.merge.recipe; "
                 "from mergekit.architecture import get_architecture_info; from mergekit.plan import MergePlanner")
STARTUP_FLOOR = "from safetensors.torch import load_file, save_file"


def sweep_cmd(code: Path | None, spec: Path, out: Path) -> list:
    """``medmerge sweep`` run with the package at ``code`` (a checkout) first on the path, or the installed one."""
    if code is None:
        return [BIN / "medmerge", "sweep", spec, out, "-q"]
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(code)!r}); from medmerge.cli import run; "
            f"sys.argv = ['medmerge'] + sys.argv[1:]; run()", "sweep", spec, out, "-q"]


def checkout(rev: str, work: Path) -> Path:
    """The ``medmerge`` package as of git revision ``rev`` of this repository, unpacked under ``work``
    (with ``git archive``: the repository is not touched; reused when it exists)."""
    repo = Path(__file__).resolve().parents[1]
    sha = subprocess.run(["git", "-C", repo, "rev-parse", "--short", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    d = work / f"code-{sha}"
    if not (d / "medmerge" / "engine.py").exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", repo, "archive", sha, "medmerge"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", d], input=archive.stdout, check=True)
    return d


def linear_recipe(clinical: Path, instruct: Path, ratio: float) -> dict:
    return {"merge_method": "linear",
            "models": [{"model": str(clinical), "parameters": {"weight": 1.0 - ratio}},
                       {"model": str(instruct), "parameters": {"weight": ratio}}]}


def equal_checkpoints(a: Path, b: Path) -> bool:
    ta = {k: v for f in sorted(a.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    tb = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    return sorted(ta) == sorted(tb) and all(ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]) for k in ta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench_out"))
    ap.add_argument("--quick", action="store_true", help="tiny models (script check only)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--against", metavar="REV", help="also time the sweep with the code of git revision REV")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side with --against (alternating)")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sweep_size, rss_sizes = ("tiny", ["tiny", "tiny"]) if args.quick else ("0.5B", ["0.5B", "2B"])
    env = dict(os.environ, MEDMERGE_CACHE_DIR=tempfile.mkdtemp(prefix="hashcache-"), PYTHONUNBUFFERED="1")

    print(f"building {sweep_size} pair ({n_params(*SIZES[sweep_size]) / 1e9:.2f}B params each, bf16) ...", flush=True)
    clinical = build_llama(work / f"{sweep_size}-clinical", sweep_size, 1)
    instruct = build_llama(work / f"{sweep_size}-instruct", sweep_size, 2)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)

    spec = work / "sweep.yml"
    spec.write_text(yaml.safe_dump({"clinical": str(clinical), "instruct": str(instruct),
                                    "methods": ["linear"], "ratios": RATIOS}))
    t_medmerge = timed(sweep_cmd(None, spec, out / "medmerge"), env)
    print(f"medmerge sweep (11 candidates):      {t_medmerge:8.1f} s", flush=True)
    keep = out / "medmerge" / "linear-0.3"
    for p in (out / "medmerge").iterdir():
        if p != keep:
            shutil.rmtree(p)

    t_mergekit = 0.0
    for r in RATIOS:
        cfg = work / f"mk-{r}.yml"
        cfg.write_text(yaml.safe_dump(linear_recipe(clinical, instruct, r)))
        t_mergekit += timed([BIN / "mergekit-yaml", cfg, out / f"mk-{r}", "--no-copy-tokenizer"], env)
        if r != 0.3:
            shutil.rmtree(out / f"mk-{r}")
    print(f"11 x mergekit-yaml:                  {t_mergekit:8.1f} s", flush=True)
    identical = equal_checkpoints(keep, out / "mk-0.3")
    shutil.rmtree(out)

    t_floor = timed([sys.executable, "-c", IO_FLOOR, clinical, instruct, out / "floor", 11], env)
    print(f"I/O floor (read once, write 11):     {t_floor:8.1f} s", flush=True)
    shutil.rmtree(out)

    s_sweep = min(timed([sys.executable, "-c", STARTUP_SWEEP], env) for _ in range(2))
    s_floor = min(timed([sys.executable, "-c", STARTUP_FLOOR], env) for _ in range(2))
    print(f"start-up imports: sweep {s_sweep:.1f} s, floor {s_floor:.1f} s", flush=True)

    against = {}
    if args.against:
        code = checkout(args.against, work)
        for _ in range(args.repeats):
            for side, where in (("this", None), (args.against, code)):
                env_i = dict(env, MEDMERGE_CACHE_DIR=tempfile.mkdtemp(prefix="hashcache-"))
                against.setdefault(side, []).append(timed(sweep_cmd(where, spec, out / side), env_i))
                shutil.rmtree(out / side)
                print(f"sweep with {side:>10} code:        {against[side][-1]:8.1f} s", flush=True)

    rss = {}
    if not args.skip_rss:
        for size in dict.fromkeys(rss_sizes):
            print(f"building {size} pair for the memory measurement ...", flush=True)
            a = build_llama(work / f"{size}-clinical", size, 1)
            b = build_llama(work / f"{size}-instruct", size, 2)
            cfg = work / f"rss-{size}.yml"
            cfg.write_text(yaml.safe_dump(linear_recipe(a, b, 0.5)))
            rss[size] = peak_rss_mib([BIN / "medmerge", "merge", cfg, out / f"rss-{size}", "-q"], env)
            print(f"peak RSS, one merge of {size}:        {rss[size]:8.0f} MiB", flush=True)
            shutil.rmtree(out)

    print("\n| measure | value | target |\n|---|---|---|")
    print(f"| medmerge sweep vs 11 x mergekit-yaml | {t_mergekit / t_medmerge:.2f}x faster | >= 3x |")
    print(f"| medmerge sweep / I/O floor | {t_medmerge / t_floor:.2f}x | <= 1.3x |")
    if t_floor > s_floor:
        print(f"| the same, start-up imports left out | {(t_medmerge - s_sweep) / (t_floor - s_floor):.2f}x "
              f"({s_sweep:.1f} s / {s_floor:.1f} s of imports) | |")
    if against:
        mine, theirs = statistics.median(against["this"]), statistics.median(against[args.against])
        print(f"| sweep, this code / code of {args.against} (median of {args.repeats}, alternating) | "
              f"{mine:.1f} / {theirs:.1f} s = {mine / theirs:.2f}x | <= 1.0x |")
    print(f"| sweep candidate == mergekit-yaml output (linear-0.3) | {'bit-identical' if identical else 'DIFFERENT'} | identical |")
    if len(rss) == 2:
        small, big = rss_sizes
        print(f"| peak RSS {big} / {small} (one merge) | {rss[big] / rss[small]:.2f} ({rss[big]:.0f} / {rss[small]:.0f} MiB) | <= 1.2 |")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
