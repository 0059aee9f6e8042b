"""Benchmark: hypervolume reached against the number of evaluations, the grid against Optuna.

On the demo models (built here if missing) with the evaluation sample shipped in the package,
side by side in one run:

* grid: the demo's 22 candidates (linear and slerp at ratios 0.0, 0.1, ..., 1.0), evaluated in a
  random order per seed (the grid has no order of its own; the order changes only the curve,
  never its end point at 22);
* optuna: ``search: optuna`` (multivariate TPE, the sampler merge_search uses) over the same
  space made continuous: linear and slerp, ratio in [0, 1]; one study per seed, budget 22.

Both maximise the same two objectives and share one reference point, the worse parent on each
axis, so their hypervolumes are comparable. Default (``--objectives heldout``): the negated
held-out loss of the demo corpora, instruct across and clinical up (nats/token; continuous, and
a few forward passes per candidate, so three seeds of 22 evaluations fit a 2-core run). Any two
suite scores work too (``--objectives mm_hellaswag medical5 --suites medical5``: the hierarchical
study's pair, at ``--limit`` documents per task; each evaluation then costs ~20-40 s here). The parents are evaluated once for the reference and are not
counted as evaluations. Every evaluation is cached on disk by candidate identity, so a grid
candidate is scored once whatever its position, and a rerun of the benchmark is quick.

Reports, per number of evaluations, the median and the range (min–max) over the seeds; then
whether Optuna's median reaches the grid's hypervolume at 22 evaluations (target) and within 11
(stretch).

    python benchmarks/search_efficiency.py [--seeds 0 1 2] [--limit 8] [--num-fewshot 0]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
RATIOS = [round(i / 10, 1) for i in range(11)]
CHECKPOINTS = (4, 6, 8, 11, 16, 22)


def hv_curve(points: list[tuple[str, float, float]], reference) -> list[float]:
    """Hypervolume of the first k points, k = 1..len(points)."""
    from medmerge.pareto import ScoredPoint, hypervolume

    pts = [ScoredPoint(name=n, if_score=x, medical_avg=y) for n, x, y in points]
    return [hypervolume(pts[:k], reference=reference) for k in range(1, len(pts) + 1)]


def heldout_evaluator(ev):
    """``evaluate(candidate) -> (-loss on instruct held-out, -loss on clinical held-out)``, memoised by name
    (a grid candidate is scored once, whatever its position in each seed's order)."""
    import os

    import torch

    from medmerge.demo import domain_texts, heldout_loss
    from medmerge.engine import PreloadedParents, merged_state_dict

    import json as _json

    texts = {c: domain_texts(ev.evaluator.tokenizer, c, "heldout") for c in ("instruct", "clinical")}
    store = Path(os.environ["MEDMERGE_CACHE_DIR"]) / "heldout.json"
    memo = {k: tuple(v) for k, v in _json.loads(store.read_text()).items()} if store.exists() else {}
    pre = []

    def evaluate(cand):
        key = cand.recipe.model_dump_json()
        if key not in memo:
            plan = ev.plan(cand)
            if not pre:
                pre.append(PreloadedParents(ev.parents, ev.representatives or [plan]))
            with torch.no_grad():
                ev.model.load_state_dict(merged_state_dict(plan, pre[0]), strict=False)
                memo[key] = tuple(-heldout_loss(ev.model, ev.evaluator.tokenizer, texts[c])
                                  for c in ("instruct", "clinical"))
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(_json.dumps(memo))
        return memo[key]

    return evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/search"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=22)
    ap.add_argument("--suites", default="medical5")
    ap.add_argument("--objectives", nargs="+", default=["heldout"], metavar="X Y",
                    help="'heldout' (default) or two suite scores (medmerge.objectives)")
    ap.add_argument("--limit", type=int, default=8, help="documents per task")
    ap.add_argument("--num-fewshot", type=int, default=0)
    ap.add_argument("--space", choices=["same", "past"], default="same",
                    help="same: Optuna over the grid's own space made continuous (linear, slerp ratio); past: "
                         "also a per-layer slerp gradient t: [x0, x1, x2] and task arithmetic's lambda")
    args = ap.parse_args()

    import os

    work = args.workdir.resolve()
    os.environ.setdefault("MEDMERGE_CACHE_DIR", str(work / "cache"))
    models = work / "models"
    if not (models / "instruct" / "config.json").exists():
        subprocess.run([BIN / "medmerge", "demo-models", models, "-q"], check=True, stdout=subprocess.DEVNULL)

    from medmerge import objectives, optuna_search
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import EvalSettings
    from medmerge.evaluation.sweep_eval import SweepEvaluator
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.recipe import SweepSpec

    suites = tuple(args.suites.split(","))
    heldout = args.objectives == ["heldout"]
    if not heldout:
        ox, oy = objectives.resolve_pair(args.objectives, suites)
    settings = EvalSettings(suites=suites, data_dir=resolve_data_dir("sample"), limit=args.limit,
                            num_fewshot=args.num_fewshot, batch_size=16)
    paths = {"clinical": str(models / "clinical"), "instruct": str(models / "instruct")}
    grid = SweepSpec(**paths, methods=["linear", "slerp"], ratios=RATIOS)
    methods = {"linear": {"ratio": {"low": 0.0, "high": 1.0}}, "slerp": {"ratio": {"low": 0.0, "high": 1.0}}}
    if args.space == "past":
        methods = {"linear": {"ratio": {"low": 0.0, "high": 1.0}},
                   "slerp": {"t": {"low": 0.0, "high": 1.0, "gradient": 3}},
                   "task_arithmetic": {"ratio": {"low": 0.0, "high": 1.0}, "lambda": {"low": 0.5, "high": 1.5}}}
        paths["base"] = str(models / "base")
    grid = grid.model_copy(update={"base": paths.get("base")})
    space = SweepSpec(**paths, search="optuna", budget=args.budget, methods=methods)
    cache = EvalCache()
    ev = SweepEvaluator(grid, settings, cache,
                        representatives=grid.candidates() + optuna_search.representatives(space))
    if heldout:
        evaluate, score, labels = heldout_evaluator(ev), (lambda r: r), ("-loss(instruct)", "-loss(clinical)")
    else:
        evaluate, score = ev.evaluate, (lambda r: (ox.score(r)[0], oy.score(r)[0]))
        labels = (ox.label, oy.label)

    t0 = time.perf_counter()
    parents = {c.role: score(evaluate(c)) for c in grid.parent_candidates()}
    reference = (min(x for x, _ in parents.values()), min(y for _, y in parents.values()))
    grid_pts = {c.name: score(evaluate(c)) for c in grid.candidates()}
    print(f"parents {parents}; reference {reference}; grid of {len(grid_pts)} scored "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    curves = {"grid": {}, "optuna": {}}
    for seed in args.seeds:
        order = list(grid_pts)
        random.Random(seed).shuffle(order)
        curves["grid"][seed] = hv_curve([(n, *grid_pts[n]) for n in order], reference)
        spec = space.model_copy(update={"seed": seed})
        t1 = time.perf_counter()
        trials = list(optuna_search.run_study(spec, evaluate, score, storage=None, name=f"bench-{seed}"))
        curves["optuna"][seed] = hv_curve([(c.name, *score(r)) for c, r in trials], reference)
        print(f"seed {seed}: optuna {len(trials)} trials ({time.perf_counter() - t1:.0f} s); "
              f"HV@22 grid {curves['grid'][seed][-1]:.5f} optuna {curves['optuna'][seed][-1]:.5f}", flush=True)

    def stats(kind, k):
        vals = [c[k - 1] for c in curves[kind].values() if len(c) >= k]
        return statistics.median(vals), min(vals), max(vals)

    print(f"\nHypervolume vs evaluations ({labels[0]} x {labels[1]}; Optuna space: {args.space}; "
          f"{len(args.seeds)} seeds; median [min, max])")
    print(f"{'evals':>5s}  {'grid (random order)':>28s}  {'optuna (TPE)':>28s}")
    for k in CHECKPOINTS:
        if k > args.budget:
            continue
        g, o = stats("grid", k), stats("optuna", k)
        print(f"{k:5d}  {g[0]:.5f} [{g[1]:.5f}, {g[2]:.5f}]  {o[0]:.5f} [{o[1]:.5f}, {o[2]:.5f}]")
    grid_full = stats("grid", len(grid_pts))[0]
    opt_full = stats("optuna", args.budget)
    first = next((k for k in range(1, args.budget + 1) if stats("optuna", k)[0] >= grid_full), None)
    print(f"\ntarget  (optuna median HV at {args.budget} >= grid HV at {len(grid_pts)}): "
          f"{opt_full[0]:.5f} vs {grid_full:.5f} -> {'met' if opt_full[0] >= grid_full else 'NOT met'} "
          f"(seeds meeting it: {sum(c[-1] >= grid_full for c in curves['optuna'].values())}/{len(args.seeds)})")
    print(f"stretch (optuna median reaches the grid's HV within 11 evaluations): "
          f"{'met at ' + str(first) if first is not None and first <= 11 else 'not met'}"
          f"{'' if first is None or first <= 11 else f' (reached at {first})'}")
    (work / "search_efficiency.json").write_text(json.dumps(
        {"reference": reference, "parents": parents, "grid_points": grid_pts, "curves": curves,
         "objectives": args.objectives, "limit": args.limit, "num_fewshot": args.num_fewshot}, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s; curves in {work / 'search_efficiency.json'}")


if __name__ == "__main__":
    main()
