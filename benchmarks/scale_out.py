"""Benchmark: the demo search on 1 local worker with all the cores vs N workers sharing them, side by side.

The demo grid (the demo models' sweep.yml: linear and slerp at 11 ratios, 22 candidates; ``--ratios`` for
fewer) evaluated on the shipped sample, each configuration in a fresh Python process with a fresh
evaluation cache (nothing served from a cache):

A. ``workers: 1`` with every core (``torch.set_num_threads(cores)``): today's one-process search;
B. ``workers: N`` with ``cores // N`` threads each (:mod:`medmerge.runtime.workers`): each worker spawns, imports
   torch and lm-eval, loads the resident model and reads the parents once, then takes candidates.

For B it reports where the time goes, per worker: start-up (spawn to its first candidate's end, less that
candidate's evaluation), evaluating (the reports' seconds: merge into the resident model + lm-eval), and
idle at the end (waiting for the other workers).

    python benchmarks/scale_out.py [--workers 2] [--limit 24] [--ratios 0,0.5,1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(args) -> dict:
    """Inner mode: one configuration, in this (fresh) process; timings as JSON."""
    threads = args.threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from medmerge.selection.search import SearchConfig, check_parents, evaluate

    sweep = json.loads(args.sweep)
    cfg = SearchConfig(sweep=sweep, suites=args.suites.split(","), data_dir="sample", limit=args.limit,
                       max_gen_toks=64, output_dir=str(Path(args.tmp) / "out"))
    parents = check_parents(cfg)
    events = []
    t0 = time.perf_counter()
    res = evaluate(cfg, parents, workers=args.n, on_event=lambda k, pid, key: events.append(
        (time.perf_counter() - t0, k, pid, key)))
    wall = time.perf_counter() - t0
    seconds = {c.name: c.report.seconds for c in res.candidates}
    assert all(not c.report.cached_tasks for c in res.candidates)
    owner, finished = {}, {}
    for t, kind, pid, key in events:
        if kind == "start":
            owner[key] = pid
        elif kind == "done":
            finished[key] = t
    workers = {}
    for key, pid in owner.items():
        w = workers.setdefault(pid, {"candidates": 0, "evaluating": 0.0, "last": 0.0})
        w["candidates"] += 1
        w["evaluating"] += seconds[key]
        w["last"] = max(w["last"], finished[key])
    if not workers:   # one worker: this process
        workers[os.getpid()] = {"candidates": len(seconds), "evaluating": sum(seconds.values()), "last": wall}
    for w in workers.values():
        w["start_up"] = w["last"] - w["evaluating"]
        w["idle"] = wall - w["last"]
    return {"wall": wall, "evaluating": sum(seconds.values()), "candidates": len(seconds),
            "workers": list(workers.values()),
            "scores": {c.name: [c.report.medical_avg, c.report.if_score] for c in res.candidates}}


def run(n: int, threads: int, sweep: dict, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="medmerge-scale-out-") as tmp:
        env = {**os.environ, "MEDMERGE_CACHE_DIR": str(Path(tmp) / "cache"), "TOKENIZERS_PARALLELISM": "false"}
        out = Path(tmp) / "timings.json"
        cmd = [sys.executable, __file__, "--one", "--n", str(n), "--threads", str(threads), "--tmp", tmp,
               "--sweep", json.dumps(sweep), "--limit", str(args.limit), "--suites", args.suites, "--json", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        timings = json.loads(out.read_text())
        timings["process"] = time.perf_counter() - t0   # the process's own start-up and parent hashing included
        return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("MEDMERGE_TEST_DEMO_MODELS",
                                                                       "demo_out/models")))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cores", type=int, default=None, help="default: the cores this process may use")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--suites", default="clinical,ifeval")
    ap.add_argument("--ratios", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")
    ap.add_argument("--json", type=Path)
    # inner mode
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--sweep", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        args.json.write_text(json.dumps(one(args)))
        return

    from medmerge.runtime.workers import cpu_count

    cores = args.cores or cpu_count()
    models = args.models.resolve()
    if not (models / "instruct" / "config.json").exists():
        subprocess.run([Path(sys.executable).parent / "medmerge", "demo-models", models, "-q"], check=True,
                       stdout=subprocess.DEVNULL)
    sweep = {"clinical": str(models / "clinical"), "instruct": str(models / "instruct"),
             "methods": ["linear", "slerp"], "ratios": [float(r) for r in args.ratios.split(",")]}
    a = run(1, cores, sweep, args)
    print(f"A. 1 worker x {cores} threads:  {a['wall']:7.1f} s  ({a['candidates']} candidates, "
          f"{a['evaluating']:.1f} s evaluating)", flush=True)
    n, per = args.workers, max(1, cores // args.workers)
    b = run(n, per, sweep, args)
    print(f"B. {n} workers x {per} thread(s): {b['wall']:7.1f} s  ({b['evaluating']:.1f} s evaluating, summed "
          "over the workers)", flush=True)
    for i, w in enumerate(b["workers"]):
        print(f"   worker {i}: {w['candidates']:2d} candidates, start-up {w['start_up']:6.1f} s, "
              f"evaluating {w['evaluating']:6.1f} s, idle at the end {w['idle']:5.1f} s")
    ratio = b["wall"] / a["wall"]
    same = a["scores"] == b["scores"]
    print(f"ratio B/A: {ratio:.2f}  (per candidate: A {a['evaluating'] / a['candidates']:.1f} s, "
          f"B {b['evaluating'] / b['candidates']:.1f} s on {per} thread(s)); same scores: {same}")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "A": a, "B": b, "ratio": ratio, "same_scores": same},
                                        indent=2))


if __name__ == "__main__":
    main()
