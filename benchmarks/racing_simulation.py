"""Benchmark: racing against full evaluation at real scale, simulated (1,000 races; numpy, one core).

A 22-candidate sweep (linear and slerp at ratios 0.0, 0.1, ..., 1.0; ratio = the instruct parent's
weight, as in ``medmerge sweep``; the two methods' ratio-0 and ratio-1 candidates are the parents
themselves and get the same outcomes) with true scores spread as in a real 8B ratio sweep:

* Medical Avg from the clinical parent's 0.66 to the instruct parent's 0.55, each of the clinical
  suite's ten tasks at its own accuracy (``TASK_OFFSETS``) around it; linear a little below slerp;
* IF score from the clinical parent's ~0.25 up to the instruct parent's ~0.80, not monotonically
  (``IF_SLERP``, ``IF_LINEAR``);
* the real suites' document counts, read from ``../shared/data`` (MMLU's six medical subjects,
  MMLU-Pro health, MedMCQA, MedQA, PubMedQA test; IFEval's prompts with their real numbers of
  instructions). Those files hold ~80% of each test set (see its README), so the counts are a little
  below the published ones (IFEval: 433 of 541 prompts); ``--scale`` multiplies them.

Per document, each candidate answers right with its task accuracy (IFEval: each instruction is
followed with a probability that gives the candidate's IF score). ``--rho`` couples candidates'
outcomes on a document (a Gaussian copula with correlation ρ: merges of one pair of parents answer
the same documents alike); the default 0 draws them independently. Full evaluation of every draw is
compared with racing (:func:`medmerge.selection.racing.race`'s rule, vectorised over the runs here and checked
against ``race`` itself on the first run) of the same draws: the near set and the knee
(:func:`medmerge.selection.pareto.select`) of all 22 candidates against those of racing's survivors, scored on
every document.

    python benchmarks/racing_simulation.py [--runs 1000] [--rho 0] [--eps 0] [--confidence 0.95]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from medmerge.selection import pareto, racing

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RATIOS = [round(i / 10, 1) for i in range(11)]
MMLU = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
        "professional_medicine")
# task accuracy - Medical Avg, as an 8B model's tasks spread (PubMedQA and the MMLU subjects above the mean,
# MMLU-Pro and MedMCQA below); they sum to 0 so the ten tasks average to Medical Avg
TASK_OFFSETS = {"anatomy": 0.03, "clinical_knowledge": 0.06, "college_biology": 0.10, "college_medicine": 0.02,
                "medical_genetics": 0.08, "professional_medicine": 0.04, "mmlu_pro_health": -0.22,
                "medmcqa": -0.08, "medqa": -0.07, "pubmedqa": 0.04}
# IF score by ratio (0 = clinical parent, 1 = instruct parent): chat behaviour comes back late and unevenly
IF_SLERP = [0.25, 0.27, 0.26, 0.31, 0.37, 0.50, 0.62, 0.70, 0.76, 0.79, 0.80]
IF_LINEAR = [0.25, 0.24, 0.28, 0.26, 0.30, 0.41, 0.55, 0.63, 0.72, 0.77, 0.80]


def medical_avg(method: str, a: float) -> float:
    """0.66 at ratio 0 to 0.55 at 1; clinical knowledge survives a small instruct share; linear pays a little
    interference in the middle."""
    return 0.66 - 0.11 * a ** 1.8 - (0.012 * np.sin(np.pi * a) if method == "linear" else 0.0)


def read_sizes(scale: float) -> tuple[dict[str, int], np.ndarray]:
    """Clinical task sizes and IFEval's instructions per prompt, from the shared data."""
    def lines(p):
        return [json.loads(x) for x in (DATA / p).read_text().splitlines() if x.strip()]

    mmlu = lines("mmlu/test.jsonl")
    sizes = {s: sum(r["subject"] == s for r in mmlu) for s in MMLU}
    sizes |= {"mmlu_pro_health": len(lines("mmlu_pro_health/test.jsonl")), "medmcqa": len(lines("medmcqa/validation.jsonl")),
              "medqa": len(lines("medqa/test.jsonl")), "pubmedqa": len(lines("pubmedqa/test.jsonl"))}
    sizes = {k: max(2, round(v * scale)) for k, v in sizes.items()}
    k = np.array([len(r["instruction_id_list"]) for r in lines("ifeval/input_data.jsonl")])
    reps = int(np.ceil(scale))
    k = np.tile(k, reps)[:max(2, round(len(k) * scale))]
    return sizes, k


@dataclass
class Sweep:
    names: list[str]
    source: np.ndarray          # candidate -> index of the distinct model whose draws it shares
    acc: np.ndarray             # (M, T) task accuracies of the distinct models
    follow: np.ndarray          # (M,) per-instruction follow probability
    true: np.ndarray            # (M, 2) true (IF score, Medical Avg)


def follow_prob(if_score: float, k: np.ndarray) -> float:
    """π with (π + mean(π^k)) / 2 = IF score (instructions followed independently)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (mid + np.mean(mid ** k)) / 2 < if_score else (lo, mid)
    return (lo + hi) / 2


def build_sweep(tasks: list[str], k: np.ndarray) -> Sweep:
    names, keys, models = [], [], {}
    for method, ifs in (("linear", IF_LINEAR), ("slerp", IF_SLERP)):
        for a, f in zip(RATIOS, ifs):
            names.append(f"{method}-{a:.1f}")
            key = ("parent", a) if a in (0.0, 1.0) else (method, a)
            models.setdefault(key, (medical_avg(method, a), f))
            keys.append(key)
    order = list(models)
    acc = np.array([[models[m][0] + TASK_OFFSETS[t] for t in tasks] for m in order])
    follow = np.array([follow_prob(models[m][1], k) for m in order])
    true = np.array([[models[m][1], models[m][0]] for m in order])
    return Sweep(names, np.array([order.index(x) for x in keys]), acc, follow, true)


def make_plan(tasks, sizes, k, args) -> racing.RacingPlan:
    kbar = k.mean()
    strata = tuple(racing.Stratum(t, sizes[t]) for t in tasks) + (
        racing.Stratum("ifeval", len(k), 0.0, (1 + k.max() / kbar) / 2),)
    se_if = float(np.mean([np.sqrt(0.25 / (len(k) - 1)), np.sqrt(0.25 / (k.sum() - 1))]))
    objectives = (racing.Objective("IF score", {"ifeval": 1.0}, max_stderr=se_if),
                  racing.Objective("Medical Avg", {t: 1 / len(tasks) for t in tasks}))
    return racing.RacingPlan(strata, objectives, first=args.first, growth=args.growth, confidence=args.confidence,
                             eps=args.eps, use_stderr=args.use_stderr, seed=args.seed, bounds=args.bounds)


def draw(rng, sweep: Sweep, sizes: list[int], k: np.ndarray, b: int, rho: float):
    """Per-document values, (b, M, N) per stratum, for b runs: 0/1 per clinical document, IFEval's
    ``(all followed + followed / k̄) / 2`` per prompt. Gaussian copula with correlation ρ across models."""
    M = len(sweep.acc)
    out = []

    def latent(shape_docs):
        g = rng.standard_normal((b, 1, *shape_docs))
        e = rng.standard_normal((b, M, *shape_docs))
        return np.sqrt(rho) * g + np.sqrt(1 - rho) * e

    for t, n in enumerate(sizes):
        thr = NormalDist().inv_cdf
        cut = np.array([thr(p) for p in sweep.acc[:, t]])[None, :, None]
        out.append((latent((n,)) < cut).astype(np.float32))
    kmax, kbar = k.max(), k.mean()
    cut = np.array([NormalDist().inv_cdf(p) for p in sweep.follow])[None, :, None, None]
    inst = latent((len(k), kmax)) < cut                                    # (b, M, P, kmax)
    inst &= (np.arange(kmax)[None, :] < k[:, None])[None, None]
    followed = inst.sum(-1)
    out.append(((followed == k) + followed / kbar).astype(np.float32) / 2)
    return out


def prefix_stats(values: list[np.ndarray], orders: list[np.ndarray], sched: np.ndarray, cross: bool):
    """Cumulative (n, Σy, Σy²) per round, arrays (R, b, C, S), and with ``cross`` Σ y_p·y_q, (R, b, C, C, S)."""
    R, S = sched.shape
    b, C = values[0].shape[:2]
    s1, s2 = np.zeros((R, b, C, S)), np.zeros((R, b, C, S))
    g = np.zeros((R, b, C, C, S)) if cross else None
    for s, (v, o) in enumerate(zip(values, orders)):
        v = v[:, :, o].astype(np.float64)
        c1, c2 = np.cumsum(v, -1), np.cumsum(v * v, -1)
        idx = sched[:, s] - 1
        s1[..., s] = np.moveaxis(c1[..., idx], -1, 0)
        s2[..., s] = np.moveaxis(c2[..., idx], -1, 0)
        if cross:
            start = 0
            acc = np.zeros((b, C, C))
            for r, stop in enumerate(sched[:, s]):
                if stop > start:
                    part = v[..., start:stop]
                    acc = acc + part @ np.swapaxes(part, -1, -2)
                g[r, ..., s] = acc
                start = stop
    n = np.broadcast_to(sched[:, None, None, :], s1.shape).astype(float)
    return n, s1, s2, g


def race_batch(plan, n, s1, s2, g, z):
    """The stopping rule of :func:`medmerge.selection.racing.race` over b runs at once: (b, C) stopped round (0: none)
    and documents used."""
    R, b, C, _ = n.shape
    last = np.zeros((b, C), dtype=int)          # the last round each candidate was scored in (0-based)
    bi = np.arange(b)[:, None, None]
    qi = np.arange(C)[None, None, :]
    pi = np.arange(C)[None, :, None]
    shift = plan.shifts()
    O = len(plan.objectives)
    lower, upper = np.full((b, C, O), -np.inf), np.full((b, C, O), np.inf)
    active = np.ones((b, C), dtype=bool)
    stop_round = np.zeros((b, C), dtype=int)
    used = np.zeros((b, C))
    for r in range(R):
        est, half = racing.objective_bounds(n[r], s1[r], s2[r], plan, z)
        a3 = active[..., None]
        lower, upper = np.where(a3, est - half, lower), np.where(a3, est + half, upper)
        used = np.where(active, n[r].sum(-1), used)
        last = np.where(active, r, last)
        if r == R - 1:      # every document scored: racing.race stops nobody after its last round
            break
        if plan.bounds == "paired":
            m = np.minimum(last[:, :, None], last[:, None, :])                  # (b, p, q): common prefix round
            npq = n[m, bi, pi]                                                  # (b, p, q, S)
            d1 = s1[m, bi, qi] - s1[m, bi, pi]
            d2 = s2[m, bi, qi] + s2[m, bi, pi] - 2 * g[m, bi, pi, qi]
            d_est, d_half = racing.paired_bounds(npq, d1, d2, plan, z)
            dom = racing.paired_dominators(d_est - d_half, shift)
        else:
            dom = racing.dominators(lower, upper, shift)
        newly = active & (dom >= 0)
        stop_round[newly] = r + 1
        active &= ~newly
    return stop_round, used


class P:
    __slots__ = ("x", "y", "name")

    def __init__(self, name, x, y):
        self.name, self.x, self.y = name, x, y


def selection(names, xy, keep, eps):
    pts = [P(n, float(x), float(y)) for n, (x, y), k in zip(names, xy, keep) if k]
    sel = pareto.select(pts, eps=eps)
    return {p.name for p in sel.near}, sel.knee.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rho", type=float, default=0.0)
    ap.add_argument("--eps", type=float, default=0.0)
    ap.add_argument("--use-stderr", action="store_true")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--bounds", choices=["paired", "marginal"], default="paired")
    ap.add_argument("--first", type=int, default=32)
    ap.add_argument("--growth", type=float, default=2.0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every document count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=25)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()

    sizes, k = read_sizes(args.scale)
    tasks = list(TASK_OFFSETS)
    sweep = build_sweep(tasks, k)
    plan = make_plan(tasks, sizes, k, args)
    sched = plan.schedule()
    orders = [plan.order(s.name) for s in plan.strata]
    C = len(sweep.names)
    z = plan.z(C)
    rng = np.random.default_rng(args.seed)
    full_docs = plan.full_documents(C)
    print(f"strata: {', '.join(f'{s.name} {s.size}' for s in plan.strata)}; {full_docs} documents for full "
          f"evaluation of {C} candidates; rounds (documents per task): {', '.join(str(int(r.max())) for r in sched)}; "
          f"z = {z:.2f} (confidence {args.confidence}, Bonferroni over {C}x{C - 1 if args.bounds == 'paired' else ''}x{len(plan.objectives)}x"
          f"{len(sched) - 1}{'x2' if args.bounds == 'marginal' else ''}, {args.bounds} bounds); rho {args.rho}; eps {args.eps}{' + stderr' if args.use_stderr else ''}", flush=True)

    same_near = same_knee = same_both = 0
    fractions, near_sizes, stopped_counts, lost_near, off_fraction = [], [], [], 0, []
    checked = False
    done = 0
    while done < args.runs:
        b = min(args.chunk, args.runs - done)
        vals = draw(rng, sweep, [sizes[t] for t in tasks], k, b, args.rho)
        vals = [v[:, sweep.source] for v in vals]                   # candidates share their model's draws
        n, s1, s2, g = prefix_stats(vals, orders, sched, cross=plan.bounds == "paired")
        stop_round, used = race_batch(plan, n, s1, s2, g, z)
        full_est, _ = racing.objective_bounds(n[-1], s1[-1], s2[-1], plan, z)   # (b, C, 2): exact full scores
        if not checked:   # the vectorised rule is racing.race's: replay run 0 through it
            strata = [s.name for s in plan.strata]
            res = racing.race(plan, sweep.names, lambda c, d, v=vals, st=strata: v[st.index(d.stratum)][
                0, sweep.names.index(c), list(d.documents)])
            assert [c.stopped_round or 0 for c in res.candidates] == list(stop_round[0]), "vectorised rule differs"
            assert np.allclose([c.documents_used for c in res.candidates], used[0])
            checked = True
        for i in range(b):
            near_f, knee_f = selection(sweep.names, full_est[i], np.ones(C, bool), args.eps)
            near_r, knee_r = selection(sweep.names, full_est[i], stop_round[i] == 0, args.eps)
            same_near += near_f == near_r
            same_knee += knee_f == knee_r
            same_both += near_f == near_r and knee_f == knee_r
            lost_near += bool(near_f - near_r)
            near_sizes.append(len(near_f))
            off = np.array([nm not in near_f for nm in sweep.names])
            off_fraction.append(used[i][off].sum() / max(1, off.sum() * full_docs / C))
            stopped_counts.append(int((stop_round[i] > 0).sum()))
            fractions.append(used[i].sum() / full_docs)
        done += b

    fr = np.array(fractions)
    runs = args.runs
    summary = {"runs": runs, "bounds": args.bounds, "rho": args.rho, "eps": args.eps, "use_stderr": args.use_stderr,
               "confidence": args.confidence, "z": z, "same_near_and_knee": same_both / runs,
               "same_near": same_near / runs, "same_knee": same_knee / runs,
               "documents_fraction_mean": float(fr.mean()), "documents_fraction_median": float(np.median(fr)),
               "documents_fraction_p95": float(np.quantile(fr, 0.95)),
               "runs_meeting_target": float(np.mean(fr <= 0.40)),
               "full_near_set_size_mean": float(np.mean(near_sizes)), "stopped_mean": float(np.mean(stopped_counts)),
               "near_set_floor": float(np.mean(near_sizes)) / C,
               "off_near_documents_fraction": float(np.mean(off_fraction)),
               "seconds": time.perf_counter() - t0}
    print(f"\n{runs} runs: racing's near set and knee = full evaluation's in {same_both}/{runs} "
          f"({100 * same_both / runs:.1f}%; near set {same_near}, knee {same_knee}); a full-evaluation near-set "
          f"member stopped in {lost_near} runs")
    print(f"documents spent: mean {100 * fr.mean():.1f}%, median {100 * np.median(fr):.1f}%, 95th percentile "
          f"{100 * np.quantile(fr, 0.95):.1f}% of full evaluation; candidates stopped: mean "
          f"{np.mean(stopped_counts):.1f} of {C}; full near set: mean {np.mean(near_sizes):.1f} candidates")
    print(f"the near set alone, evaluated in full, is {100 * np.mean(near_sizes) / C:.1f}% of the documents (no rule "
          f"can spend less and return it with full-suite scores); on the other candidates racing spent "
          f"{100 * np.mean(off_fraction):.1f}% of their documents")
    ok = same_both / runs >= 0.95 and np.mean(fr <= 0.40) >= 0.95
    print(f"target (>= 95% of runs right, at <= 40% of the documents): {'met' if ok else 'NOT met'} "
          f"({100 * same_both / runs:.1f}% right; {100 * np.mean(fr <= 0.40):.1f}% of runs at <= 40%) "
          f"[{summary['seconds']:.0f} s]")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
