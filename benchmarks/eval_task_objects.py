"""Benchmark: an in-memory sweep's evaluation with lm-eval's task objects built once, against rebuilt per candidate.

The evaluator keeps lm-eval's task objects per (task, shots) for every candidate it scores; before, every
candidate's evaluation rebuilt each task, reloading its dataset (what passing task configs to
``lm_eval.simple_evaluate`` does). Side by side in one run, alternating per candidate, on the demo models and
the real test files in ``../shared/data`` (``--limit`` documents per task, clinical and IFEval, zero-shot),
evaluation cache off: the same candidates scored both ways, their scores compared.

    python benchmarks/eval_task_objects.py [--limit 48] [--ratios 0 0.3 0.7 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.3, 0.7, 1.0])
    args = ap.parse_args()

    from medmerge.demo.cache import cached_demo_models
    from medmerge.evaluation.runner import EvalSettings
    from medmerge.evaluation.sweep_eval import SweepEvaluator
    from medmerge.merge.recipe import SweepSpec

    models = cached_demo_models(seed=0, quiet=True)
    spec = SweepSpec(clinical=str(models["clinical"]), instruct=str(models["instruct"]), methods=["linear"],
                     ratios=args.ratios)
    settings = EvalSettings(suites=("clinical", "ifeval"), data_dir=str(DATA.resolve()), limit=args.limit,
                            max_gen_toks=64)
    ev = SweepEvaluator(spec, settings, cache=None)
    cands = spec.candidates()
    plans = [ev.plan(c) for c in cands]
    ev.evaluate(cands[0], plans[0], plans)    # warm-up: imports, parents read, first task objects
    times: dict[str, list[float]] = {"reused": [], "rebuilt": []}
    same = True
    for cand, plan in zip(cands, plans):
        scores = {}
        for arm in ("rebuilt", "reused") if len(times["reused"]) % 2 else ("reused", "rebuilt"):
            if arm == "rebuilt":
                ev.evaluator._task_objects.clear()   # what every candidate paid before: each task built anew
            t0 = time.perf_counter()
            report = ev.evaluate(cand, plan, plans)
            times[arm].append(time.perf_counter() - t0)
            scores[arm] = {t: r.metrics for t, r in report.tasks.items()}
        same &= scores["reused"] == scores["rebuilt"]
        print(f"{cand.name}: reused {times['reused'][-1]:.1f} s, rebuilt {times['rebuilt'][-1]:.1f} s; "
              f"scores {'equal' if scores['reused'] == scores['rebuilt'] else 'DIFFER'}", flush=True)
    reused, rebuilt = sum(times["reused"]), sum(times["rebuilt"])
    print(f"{len(cands)} candidates, {args.limit} documents per task: task objects reused {reused:.1f} s, rebuilt per "
          f"candidate {rebuilt:.1f} s -> {reused / rebuilt:.2f}x; every score equal: {same}")


if __name__ == "__main__":
    main()
