"""Benchmark: ``medmerge evaluate`` against stock ``lm_eval --model hf`` on the same work, side by side.

Same checkpoint (the demo clinical model, built here if missing, or ``--model``), same tasks (medmerge's
task YAMLs of ``--suites``: stock lm-eval runs them through ``--include_path`` with the data switched to the
same local files and the same row filters, so both send the same requests), same documents (``--limit``),
same batch size (``--batch-size``, an integer or ``auto`` as lm-eval takes it), same generation length, same
device and dtype. Measured in one run, alternating, ``--repeats`` times each (median):

A. ``medmerge evaluate --no-cache``       medmerge, evaluation cache off;
B. ``medmerge evaluate`` (cache cold)    the first run with the cache: evaluates and fills it;
C. ``medmerge evaluate`` (cache warm)    every task a cache hit;
D. ``lm_eval run --model hf``            stock lm-eval.

Where the time goes: each command's wall time, split in two. "inside": medmerge's report ``seconds``
(cache look-ups, lm-eval's request building and the model calls) or lm-eval's own
``total_evaluation_time_seconds`` (counted from its CLI's tracker: indexing every task YAML lm-eval ships
(~15,000) to resolve ``--tasks``, the model load, request building and the model calls). "outside": the rest
(interpreter start-up and imports; for medmerge also checking the data files, hashing the checkpoint and
loading the model; writing the results).

    python benchmarks/eval_vs_lm_eval.py [--suites clinical,ifeval] [--limit 8] [--batch-size 8|auto]
        [--max-gen-toks 32] [--data-dir sample] [--repeats 1] [--device cpu]
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

BIN = Path(sys.executable).parent


def stock_task_dir(suites: list[str], data_dir: str, out: Path) -> list[str]:
    """An lm-eval ``--include_path`` directory: one YAML per medmerge task of ``suites`` that includes the
    task's own YAML and reads the local files medmerge reads (``metadata.local``), with the same row
    filter (``where``) or layout mapping; returns the task names."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from medmerge.evaluation.tasks import TASKS_DIR, suite_tasks, task_spec

    out.mkdir(parents=True, exist_ok=True)
    filters = ["# row filters of medmerge's local data (metadata.local.where)\n"]
    names: list[str] = []
    for tasks in suite_tasks(suites).values():
        for task in tasks:
            if task in names:
                continue
            names.append(task)
            spec = task_spec(task, data_dir)          # checks the files as medmerge does
            raw = load_yaml(TASKS_DIR / f"{task}.yaml", resolve_func=False)
            if "include_lm_eval" in raw:
                raise SystemExit(f"{task} includes lm-eval's own YAML: compare it with tests/test_mmlu_pro_stock.py")
            local = raw.get("metadata", {}).get("local", {})
            files = {split: str(f) for split, f in spec.data_files.items()}
            lines = [f"include: {TASKS_DIR / f'{task}.yaml'}", f"task: {task}", "dataset_path: json",
                     "dataset_name: null", f"dataset_kwargs: {json.dumps({'data_files': files})}"]
            for key in ("training_split", "validation_split", "fewshot_split"):
                if key in spec.config or key in raw:
                    lines.append(f"{key}: {json.dumps(spec.config.get(key))}")
            where = local.get("where")
            if where:
                filters.append(f"def {task}(ds):\n    return ds.filter(lambda d: all(d.get(k) == v for k, v in "
                               f"{where!r}.items()))\n\n")
                lines.append(f"process_docs: !function bench_docs.{task}")
            else:
                lines.append("process_docs: null")
            (out / f"{task}.yaml").write_text("\n".join(lines) + "\n")
    (out / "bench_docs.py").write_text("\n".join(filters))
    return names


def timed(cmd: list, env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(map(str, cmd))}\n{res.stdout[-3000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/eval_vs_lm_eval"))
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the demo clinical model)")
    ap.add_argument("--suites", default="clinical,ifeval")
    ap.add_argument("--data-dir", default="sample")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--max-gen-toks", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    from medmerge.evaluation.tasks import resolve_data_dir

    work = args.workdir.resolve()
    model = args.model
    if model is None:
        model = work / "models" / "clinical"
        if not (model / "config.json").exists():
            subprocess.run([BIN / "medmerge", "demo-models", work / "models", "-q"], check=True,
                           stdout=subprocess.DEVNULL)
    data_dir = resolve_data_dir(args.data_dir)
    suites = [s for s in args.suites.split(",") if s]
    include = work / "lm_eval_tasks"
    shutil.rmtree(include, ignore_errors=True)
    tasks = stock_task_dir(suites, data_dir, include)
    dtype = "float32" if args.device == "cpu" else "auto"   # medmerge's dtype auto: float32 on a CPU
    env = {**os.environ, "MEDMERGE_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--suite", args.suites, "--data-dir", data_dir, "--limit", args.limit, "--batch-size", args.batch_size,
              "--max-gen-toks", args.max_gen_toks, "--device", args.device, "--dtype", dtype]
    stock = [BIN / "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype={dtype}",
             "--tasks", ",".join(tasks), "--include_path", include, "--limit", args.limit,
             "--batch_size", args.batch_size, "--device", args.device,
             "--gen_kwargs", f"max_gen_toks={args.max_gen_toks}", "--seed", "1234,1234,1234,1234"]

    # untimed: the Punkt model IFEval's checkers use (trained once, then read by both), and one import of
    # everything both commands load, so the first timed command does not pay for a cold file cache
    subprocess.run([sys.executable, "-c", "from medmerge.evaluation.ifeval_offline import ifeval_utils; "
                    "ifeval_utils(); import lm_eval.evaluator, lm_eval.models.huggingface, medmerge.cli, "
                    "medmerge.evaluation.runner, transformers; from transformers import AutoModelForCausalLM"],
                   env=env, check=True)
    times: dict[str, list[float]] = {k: [] for k in "ABCD"}
    inner: dict[str, list[float]] = {k: [] for k in "ABCD"}
    for i in range(args.repeats):
        shutil.rmtree(work / "cache" / "eval", ignore_errors=True)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            tmp = Path(tmp)
            order = ["D", "A", "B", "C"] if i % 2 == 0 else ["A", "B", "C", "D"]   # alternate who goes first
            for key in order:
                if key == "D":
                    times["D"].append(timed([*stock, "--output_path", tmp / "stock"], env))
                    res = json.loads(next((tmp / "stock").rglob("results_*.json")).read_text())
                    inner["D"].append(float(res["total_evaluation_time_seconds"]))
                    continue
                out = tmp / f"{key}.json"
                extra = ["--no-cache"] if key == "A" else []
                times[key].append(timed([BIN / "medmerge", "evaluate", model, "--out", out, *common, *extra], env))
                inner[key].append(json.loads(out.read_text())["seconds"])
            ours = json.loads((tmp / "A.json").read_text())["tasks"]
            for task, r in ours.items():   # the same work gives the same numbers
                for metric, m in r["metrics"].items():
                    theirs = res["results"][task].get(f"{metric},none")
                    if theirs is None or abs(theirs - m["value"]) > 1e-9:
                        print(f"warning: {task} {metric}: medmerge {m['value']} vs lm-eval {theirs}")
        print("repeat done: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    med_inner = {k: statistics.median(v) for k, v in inner.items()}
    labels = {"A": "medmerge evaluate --no-cache", "B": "medmerge evaluate, cache cold",
              "C": "medmerge evaluate, cache warm", "D": "lm_eval run --model hf"}
    print(f"\n{len(tasks)} tasks ({args.suites}), limit {args.limit}, batch size {args.batch_size}, "
          f"max_gen_toks {args.max_gen_toks}, {args.device}, {args.repeats} repeat(s), median:\n")
    print("| command | wall | inside | outside | / lm_eval wall |")
    print("|---|---|---|---|---|")
    for k in "ABCD":
        print(f"| {k}. {labels[k]} | {med[k]:.1f} s | {med_inner[k]:.1f} s | {med[k] - med_inner[k]:.1f} s | "
              f"{med[k] / med['D']:.2f}x |")


if __name__ == "__main__":
    main()
