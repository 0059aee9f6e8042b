"""Benchmark: merge_search's ``evaluation: racing`` against full evaluation, on the demo models and real data.

The demo grid (linear and slerp at ratios 0.0, 0.1, ..., 1.0: 22 candidates) scored on the forgetting study's
suites (clinical and IFEval, zero-shot) from ``../shared/data`` (the real test sets; ``--limit`` documents per
task), side by side in one run, each arm with a fresh evaluation cache:

* the grid, fully evaluated (``evaluation: full``);
* the grid raced (``evaluation: racing``), once per document-order seed (``--seeds``).

For each: documents scored, wall time, and whether the near set and the knee equal the full grid's; for a
race, which candidates stopped, after how many documents and why (the interval that stopped it). The demo
models sit close to chance and close to each other, so few stops are expected there. An Optuna
search is not raced inside merge_search; ``benchmarks/search_efficiency.py --racing`` races trials.

    python benchmarks/racing_pipeline.py [--limit 48] [--seeds 0 1 2] [--first 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def run_arm(cfg, parents, cache: Path, on_round=None) -> tuple[object, float]:
    """merge_search's evaluation step for ``cfg`` with a fresh cache (a race through its core, to watch its rounds)."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.selection import search
    from medmerge.selection.race_search import race_grid

    os.environ["MEDMERGE_CACHE_DIR"] = str(cache)
    t0 = time.perf_counter()
    if cfg.evaluation == "racing":
        results = search.raced_results(parents, race_grid(cfg, EvalCache(), on_round=on_round))
    else:
        results = search.evaluate(cfg, parents)
    return results, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=48, help="documents per task")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--first", type=int, default=8)
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--max-gen-toks", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import yaml

    from medmerge.demo.cache import cached_demo_models
    from medmerge.selection import search

    work = Path(tempfile.mkdtemp(prefix="medmerge-racing-bench-"))
    models = cached_demo_models(seed=0, quiet=True)
    sweep = work / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(models["clinical"]), "instruct": str(models["instruct"]),
                                     "methods": ["linear", "slerp"], "ratios": [round(i / 10, 1) for i in range(11)]}))
    base = {"sweep": str(sweep), "suites": ["clinical", "ifeval"], "data_dir": str(DATA.resolve()),
            "limit": args.limit, "max_gen_toks": args.max_gen_toks, "eps": args.eps, "output_dir": str(work / "out")}
    full_cfg = search.SearchConfig(**base)
    parents = search.check_parents(full_cfg)
    (work / "figures").mkdir()

    def chosen(cfg, results):
        fr = search.select_frontier(results, cfg, work / "figures")
        return sorted(fr.near), fr.knee

    full, full_s = run_arm(full_cfg, parents, work / "cache-full")
    near, knee = chosen(full_cfg, full)
    per_candidate = sum(c.report.tasks[t].n_samples for c in full.candidates[:1] for t in c.report.tasks)
    full_docs = per_candidate * len(full.candidates)
    rows = [{"arm": "grid, full evaluation", "documents": full_docs, "seconds": full_s, "same_near": True,
             "same_knee": True, "stopped": []}]
    print(f"grid, full evaluation: {len(full.candidates)} candidates x {per_candidate} documents = {full_docs}; "
          f"{full_s:.1f} s; near set {near}; knee {knee}", flush=True)
    for seed in args.seeds:
        cfg = search.SearchConfig(**base, evaluation="racing", racing={"first": args.first, "seed": seed})
        first: dict = {}

        def keep_round_1(r, res, first=first):
            if r == 1:
                first.update({c.name: (c.estimate, c.half_width, c.documents_used) for c in res.candidates})

        raced, s = run_arm(cfg, parents, work / f"cache-race-{seed}", keep_round_1)
        r_near, r_knee = chosen(cfg, raced)
        rec = raced.racing or {}
        stops = [(c.name, c.race["documents"]) for c in raced.stopped if c.race]
        rows.append({"arm": f"grid raced, seed {seed}", "documents": rec.get("documents_used"), "seconds": s,
                     "same_near": r_near == near, "same_knee": r_knee == knee, "stopped": stops, "z": rec.get("z"),
                     "rounds": rec.get("rounds")})
        print(f"grid raced, seed {seed}: {rec.get('documents_used')} documents ({100 * rec.get('documents_used', 0) / full_docs:.1f}%), "
              f"{s:.1f} s ({s / full_s:.2f}x), z {rec.get('z', 0):.2f}, {len(stops)} stopped {stops}; near set "
              f"{'equal' if r_near == near else f'DIFFERS: {r_near}'}, knee {'equal' if r_knee == knee else f'DIFFERS: {r_knee}'}",
              flush=True)
        for c in raced.stopped:
            print(f"    {c.name}: {c.race['reason'] if c.race else ''}")
        if seed == args.seeds[0]:   # why (nearly) nobody stops: the intervals after round 1
            print(f"    after round 1, each candidate's estimate ± half-width (z = {rec.get('z', 0):.2f}; the rule "
                  "bounds pairwise differences, which are narrower):")
            for name, (est, half, docs) in first.items():
                print(f"      {name:12s} ({docs} documents) IF score {est[0]:.3f} ± {half[0]:.3f}, "
                      f"Medical Avg {est[1]:.3f} ± {half[1]:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
