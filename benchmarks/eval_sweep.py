"""Benchmark: evaluating an 11-candidate sweep in memory vs writing each candidate and evaluating it from disk.

On the demo models (built here if missing) with the evaluation sample shipped in the package,
measured side by side in one run, evaluation cache off everywhere:

A. ``medmerge evaluate-sweep``: parents read once, candidates merged into one resident model;
B. what a user does without it: ``medmerge sweep`` (write 11 checkpoints), then
   ``medmerge evaluate`` on each checkpoint (a process per candidate, as in a shell loop);
C. the same as B inside one Python process (one start-up in all): isolates the cost of writing,
   hashing and reloading checkpoints from the evaluation itself.

    python benchmarks/eval_sweep.py [--limit 8] [--suites clinical]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
RATIOS = [round(i / 10, 1) for i in range(11)]


def run(cmd) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/eval"))
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--suites", default="clinical")
    args = ap.parse_args()
    work = args.workdir.resolve()
    models = work / "models"
    if not (models / "instruct" / "config.json").exists():
        subprocess.run([BIN / "medmerge", "demo-models", models, "-q"], check=True, stdout=subprocess.DEVNULL)
    spec = work / "sweep.yml"
    spec.write_text(yaml.safe_dump({"clinical": str(models / "clinical"), "instruct": str(models / "instruct"),
                                    "methods": ["linear"], "ratios": RATIOS}))
    common = ["--suite", args.suites, "--data-dir", "sample", "--limit", str(args.limit), "--no-cache"]

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    t_mem = run([BIN / "medmerge", "evaluate-sweep", spec, "--out", out / "reports-mem", *common])
    print(f"A. in memory (evaluate-sweep):              {t_mem:7.1f} s", flush=True)

    t_disk = run([BIN / "medmerge", "sweep", spec, out / "cands", "-q"])
    for r in RATIOS:
        name = f"linear-{r:.1f}"
        t_disk += run([BIN / "medmerge", "evaluate", out / "cands" / name, "--out", out / f"{name}.json", *common])
    print(f"B. sweep to disk + evaluate each (CLI):     {t_disk:7.1f} s", flush=True)
    shutil.rmtree(out / "cands")

    in_process = f"""
import sys, time
from pathlib import Path
from importlib.resources import files
from medmerge.merge.engine import sweep
from medmerge.evaluation.runner import EvalSettings, evaluate_checkpoint
from medmerge.merge.recipe import load_sweep
t0 = time.perf_counter()
settings = EvalSettings(suites=tuple({args.suites!r}.split(',')), limit={args.limit},
                        data_dir=str(files('medmerge') / 'resources' / 'eval_sample'))
for name, path in sweep(load_sweep({str(spec)!r}), {str(out / 'cands2')!r}, quiet=True).items():
    evaluate_checkpoint(path, settings)
print(time.perf_counter() - t0)
"""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", in_process], check=True, capture_output=True, text=True)
    t_inproc = time.perf_counter() - t0
    work_only = float(res.stdout.strip().splitlines()[-1])
    print(f"C. sweep to disk + evaluate each (1 proc):  {t_inproc:7.1f} s ({work_only:.1f} s after start-up)",
          flush=True)
    shutil.rmtree(out)

    print("\n| measure | value | target |\n|---|---|---|")
    print(f"| in memory / (write + evaluate from disk, CLI per candidate) | {t_mem / t_disk:.2f}x | <= 0.5x |")
    print(f"| in memory / (write + evaluate from disk, one process) | {t_mem / t_inproc:.2f}x | (no target) |")


if __name__ == "__main__":
    main()
