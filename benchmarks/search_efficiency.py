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

``--racing``: cost counted in documents, not trials (issue 24). The objectives become per-document
held-out losses: x = the mean over the instruct held-out documents of −(mean next-token NLL of the
document, scored alone as ``<s> text </s>``), y the same over the clinical ones (37 + 22 documents: a
full evaluation is 59). Side by side, three seeds each:

* grid: the 22 candidates, every document (the 1-D grid's hypervolume is the target);
* grid raced: :func:`medmerge.selection.racing.race` over the same 22 (paired bounds, 8 then 16, 32, all
  documents per corpus); its near set and knee against the full grid's;
* Optuna, every trial on every document (no warm start): the study as ``search: optuna`` runs it;
* Optuna raced and warm-started: the study first evaluates the space's coarse grid
  (:func:`medmerge.selection.optuna_search.coarse_grid`, enqueued with ``study.enqueue_trial``: each range at
  ``--warm-levels`` of its span, by default 1/4 and 3/4, a gradient constant across layers: 8 points in the
  per-layer space), raced as one pool; then each trial is raced against the frontier of the trials finished
  before it (:class:`medmerge.selection.trial_race.TrialRace`: control-variate estimates against the parents
  and the finished trials, one-sided ``--confidence`` 0.8; a trial stops when even its upper corner adds less
  than ``--min-gain`` 0.5% of the ideal box to the hypervolume, after ``--trial-first`` 4, 8, 16, ...
  documents per corpus), and a stopped trial is told its estimates; samplers ``--samplers`` (multivariate TPE,
  TPE with ``group=True``, GP);
* the same, with frontier bisection: before each ask, :func:`medmerge.selection.optuna_search.frontier_bisection`
  enqueues, per method, the midpoint of the two finished trials whose chord leaves the largest gap in the
  frontier, and those proposals race as one pool; the sampler proposes when no gap is left.

Each study runs until it has spent the grid's documents (or ``--max-trials``); reported per arm: documents
(as a share of the full grid's), wall time, hypervolume against documents, and the documents at which the
median over seeds first reaches the full grid's hypervolume. Target: the warm-started raced search in the
per-layer space (``--space past``) at <= 50% of the grid's documents. Per-document losses are cached on disk
by (recipe, corpus, document), so wall times after the first arm mostly measure merging.

    python benchmarks/search_efficiency.py --racing --space past [--samplers tpe tpe-group gp]
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
    from medmerge.selection.pareto import ScoredPoint, hypervolume

    pts = [ScoredPoint(name=n, x=x, y=y) for n, x, y in points]
    return [hypervolume(pts[:k], reference=reference) for k in range(1, len(pts) + 1)]


def heldout_evaluator(ev):
    """``evaluate(candidate) -> (-loss on instruct held-out, -loss on clinical held-out)``, memoised by name
    (a grid candidate is scored once, whatever its position in each seed's order)."""
    import json as _json
    import os

    import torch

    from medmerge.demo import domain_texts, heldout_loss
    from medmerge.merge.engine import PreloadedParents, merged_state_dict

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


def doc_values(ev):
    """``values(candidate, corpus, indices) -> [−NLL per token of each held-out document]``, each document scored
    alone (``<s> text </s>``, at most the model's context), memoised on disk per (recipe, corpus, document)."""
    import os

    import torch

    from medmerge.demo import domain_texts
    from medmerge.demo.training import encode_docs
    from medmerge.merge.engine import PreloadedParents, merged_state_dict

    tok = ev.evaluator.tokenizer
    ctx = ev.model.config.max_position_embeddings
    ids = {c: [d[:ctx] for d in encode_docs(tok, domain_texts(tok, c, "heldout"))] for c in CORPORA}
    store = Path(os.environ["MEDMERGE_CACHE_DIR"]) / "heldout_docs.json"
    memo = json.loads(store.read_text()) if store.exists() else {}
    pre, loaded = [], [None]

    def losses(docs):
        width = max(len(d) for d in docs)
        x = torch.full((len(docs), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(docs), width), dtype=torch.long)
        for i, d in enumerate(docs):
            x[i, :len(d)], mask[i, :len(d)] = torch.tensor(d), 1
        with torch.no_grad():
            logits = ev.model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        keep = mask[:, 1:].float()
        return ((nll * keep).sum(1) / keep.sum(1)).tolist()

    def values(cand, corpus, indices):
        key = cand.recipe.model_dump_json()
        got = memo.setdefault(key, {}).setdefault(corpus, {})
        missing = [i for i in indices if str(i) not in got]
        if missing:
            if loaded[0] != key:
                plan = ev.plan(cand)
                if not pre:
                    pre.append(PreloadedParents(ev.parents, ev.representatives or [plan]))
                with torch.no_grad():
                    ev.model.load_state_dict(merged_state_dict(plan, pre[0]), strict=False)
                ev.model.eval()
                loaded[0] = key
            for i in range(0, len(missing), 16):
                chunk = missing[i:i + 16]
                for j, v in zip(chunk, losses([ids[corpus][j] for j in chunk])):
                    got[str(j)] = -v
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(memo))
        return [max(-LOSS_CAP, got[str(i)]) for i in indices]

    values.sizes = {c: len(ids[c]) for c in CORPORA}
    return values


CORPORA = ("instruct", "clinical")
LOSS_CAP = 50.0     # per-document −loss is clipped at −50 nats/token (a chance-level model here: ~log V ≈ 6)


def racing_plan(values, parents, first: int, racing: bool = True):
    """Strata: the two held-out corpora; x = mean −loss over instruct documents, y over clinical ones. Each
    stratum's sample variance is shrunk towards the parents' per-document difference variance (values are
    losses, not 0/1, so the range's worst case would swamp them). ``racing=False``: one round of every
    document (a plain full evaluation, counted the same way)."""
    import numpy as np

    from medmerge.selection import racing as rc

    strata = []
    for c in CORPORA:
        n = values.sizes[c]
        a, b = (np.array(values(p, c, range(n))) for p in parents)
        strata.append(rc.Stratum(c, n, low=-LOSS_CAP, high=0.0, prior_variance=float(np.var(a - b)) / 4))
    objectives = (rc.Objective(f"-loss({CORPORA[0]})", {CORPORA[0]: 1.0}),
                  rc.Objective(f"-loss({CORPORA[1]})", {CORPORA[1]: 1.0}))
    first = first if racing else max(values.sizes.values())
    return rc.RacingPlan(tuple(strata), objectives, first=first)


def hv_of(points, reference) -> float:
    from medmerge.selection.pareto import ScoredPoint, hypervolume

    if not points:
        return 0.0
    return hypervolume([ScoredPoint(name=n, x=x, y=y) for n, x, y in points], reference=reference)


def run_raced_study(space, plan, scorer_of, cands, references, *, sampler: str, seed: int, warm: list[dict],
                    budget_docs: int, max_trials: int, confidence: float, min_gain: float, bisect: bool):
    """One study: trials race the frontier of the trials finished before them
    (:class:`medmerge.selection.trial_race.TrialRace`; ``min_gain=0``: every trial on every document) until
    ``budget_docs`` are spent; the warm-start grid races as one pool, then one trial at a time, and with
    ``bisect`` the proposals of :func:`medmerge.selection.optuna_search.frontier_bisection` (one per method, if
    any) are enqueued and raced as one pool before the sampler is asked again. Returns the curve ``[(documents so far, hypervolume of the trials scored on every
    document)]``, one point per decided trial, and the race."""
    import dataclasses

    import optuna

    from medmerge.selection import optuna_search
    from medmerge.selection.trial_race import TrialRace

    study = optuna.create_study(directions=["maximize", "maximize"],
                                sampler=optuna_search.make_sampler(sampler, seed))
    for params in warm:
        study.enqueue_trial(params)
    race = TrialRace(dataclasses.replace(plan, seed=seed), scorer_of, references, confidence=confidence,
                     min_gain=min_gain)
    scored: list[tuple[dict, float, float]] = []
    tried: set[str] = set()
    asked, batch = 0, max(1, len(warm))
    while race.spent < budget_docs and asked < max_trials:
        if bisect and scored and batch == 1:
            proposals = optuna_search.frontier_bisection(space, scored, race.gain, tried)
            for params in proposals:
                study.enqueue_trial(params)
            batch = max(1, len(proposals))      # the proposals race as one pool
        trials = [study.ask() for _ in range(batch)]
        asked += batch
        names = []
        for trial in trials:
            method, params = optuna_search.suggest(trial, space)
            cand = space.candidate(method, params,
                                   name=f"s{seed}-{sampler}-{optuna_search.trial_name(trial.number, method)}")
            cands[cand.name] = cand
            names.append(cand.name)
        for trial, course in zip(trials, race.race(names)):
            study.tell(trial, list(course.estimate))
            if not course.stopped:
                scored.append((dict(trial.params), *course.estimate))
        batch = 1
    return [(d.spent, d.hypervolume) for d in race.decisions], race


def racing_comparison(args, grid, space, ev, work) -> None:
    import statistics

    from medmerge.selection import optuna_search, pareto
    from medmerge.selection.racing import race

    values = doc_values(ev)
    cands = {}

    def scorer(name, docs):
        return values(cands[name], docs.stratum, list(docs.documents))

    t0 = time.perf_counter()
    parents = grid.parent_candidates()
    plan = racing_plan(values, parents, args.first)
    trial_plan = racing_plan(values, parents, args.trial_first)
    full_plan = racing_plan(values, parents, args.first, racing=False)
    full_docs = full_plan.full_documents(1)
    ref_pts = {p.role: [float(sum(values(p, c, range(values.sizes[c]))) / values.sizes[c]) for c in CORPORA]
               for p in parents}
    reference = (min(v[0] for v in ref_pts.values()), min(v[1] for v in ref_pts.values()))
    for c in grid.candidates():
        cands[c.name] = c
    t1 = time.perf_counter()
    full = race(full_plan, list(cands), scorer)
    t_grid = time.perf_counter() - t1
    grid_docs = full.documents_used
    grid_pts = [(c.name, *c.estimate) for c in full.candidates]
    grid_hv = hv_of(grid_pts, reference)
    print(f"parents {ref_pts}; reference {reference}; {full_docs} documents per full evaluation "
          f"({', '.join(f'{s.name} {s.size}' for s in plan.strata)}); plan: rounds "
          f"{[list(map(int, r)) for r in plan.schedule()]}", flush=True)

    class Pt:
        def __init__(self, n, x, y):
            self.name, self.x, self.y = n, x, y

    def sel(points):
        s = pareto.select([Pt(*p) for p in points], eps=0.0)
        return sorted(p.name for p in s.near), s.knee.name

    t1 = time.perf_counter()
    first_round = {}
    raced = race(plan, list(c.name for c in grid.candidates()), scorer, on_round=lambda r, res: first_round.update(
        {c.name: (c.estimate, c.half_width) for c in res.candidates}) if r == 1 else None)
    t_raced = time.perf_counter() - t1
    near_full, knee_full = sel(grid_pts)
    surv = [(c.name, *c.estimate) for c in raced.survivors()]
    near_r, knee_r = sel(surv)
    rows = [("grid, every document", grid_docs, t_grid, grid_hv, "(itself)")]
    rows.append(("grid raced", raced.documents_used, t_raced, hv_of(surv, reference),
                 "yes" if (near_r, knee_r) == (near_full, knee_full) else f"NO: near {near_r} knee {knee_r}"))
    stopped = [c for c in raced.candidates if c.stopped]
    print(f"grid: hypervolume {grid_hv:.5f}, near set {near_full}, knee {knee_full}")
    print(f"grid raced: {len(stopped)} of {len(raced.candidates)} stopped, {raced.documents_used} of {grid_docs} "
          f"documents; near set and knee equal to the full grid's: {rows[-1][-1]}")
    for c in stopped:
        print(f"  {c.name}: {c.reason}")
    print(f"after round 1 ({int(sum(plan.schedule()[0]))} documents), each candidate's estimate ± half-width "
          f"(z = {raced.z:.2f}; the paired rule bounds differences, which are narrower):")
    for name, (est, half) in first_round.items():
        print(f"  {name:12s} " + "  ".join(f"{o.name} {e:.3f} ± {h:.3f}" for o, e, h in zip(plan.objectives, est, half)))
    warm = optuna_search.coarse_grid(space, levels=tuple(args.warm_levels))
    print(f"warm start: the space's coarse grid, {len(warm)} points raced as one pool "
          f"(optuna_search.coarse_grid: each range at {', '.join(f'{v:g}' for v in args.warm_levels)} of its span); "
          f"trials raced at {args.confidence:.0%} against the finished trials' frontier, stopped when their upper "
          f"corner adds under {args.min_gain:.2%} of the ideal box; rounds {[list(map(int, r)) for r in trial_plan.schedule()]}")
    references = {p.name: [values(p, c, range(values.sizes[c])) for c in CORPORA] for p in parents}
    arms = [("optuna, every document, no warm start", "tpe", 0.0, [], False)]
    arms += [(f"optuna raced + warm start ({s})", s, args.min_gain, warm, False) for s in args.samplers]
    arms += [(f"optuna raced + warm start + bisection ({s})", s, args.min_gain, warm, True) for s in args.samplers]
    results = {}
    for label, sampler, min_gain, warm_params, bisect in arms:
        curves, secs = {}, 0.0
        for seed in args.seeds:
            t1 = time.perf_counter()
            curve, res = run_raced_study(space.model_copy(update={"seed": seed}), trial_plan, scorer, cands, references,
                                         sampler=sampler, seed=seed, warm=warm_params, budget_docs=grid_docs,
                                         max_trials=args.max_trials, confidence=args.confidence, min_gain=min_gain,
                                         bisect=bisect)
            secs += time.perf_counter() - t1
            curves[seed] = curve
            first = next((d for d, h in curve if h >= grid_hv), None)
            stopped = sum(d.course.stopped for d in res.decisions)
            print(f"  {label}, seed {seed}: {len(curve)} trials, {stopped} stopped; "
                  f"HV {curve[-1][1]:.5f} at {curve[-1][0]} documents; grid's HV reached at "
                  f"{first if first is not None else 'never'}", flush=True)
        results[label] = curves

        def hv_at(docs):
            return statistics.median(max([h for d, h in c if d <= docs], default=0.0) for c in curves.values())

        marks = sorted({d for c in curves.values() for d, _ in c if d <= grid_docs})
        reach = next((d for d in marks if hv_at(d) >= grid_hv), None)
        rows.append((label, statistics.median(c[-1][0] for c in curves.values()), secs / len(args.seeds),
                     hv_at(grid_docs), f"median reaches the grid's HV at "
                     f"{'never' if reach is None else f'{reach} documents ({100 * reach / grid_docs:.0f}%)'}"))
    print(f"\n{'arm':50s} {'documents':>10s} {'of grid':>8s} {'wall s':>7s} {'HV':>9s}  note")
    for label, docs, secs, hv, note in rows:
        print(f"{label:50s} {docs:10.0f} {100 * docs / grid_docs:7.0f}% {secs:7.1f} {hv:9.5f}  {note}")
    print("\nhypervolume (median over seeds) against documents, as a share of the grid's:")
    marks = [0.25, 0.5, 0.75, 1.0]
    print(f"{'arm':50s} " + " ".join(f"{int(100 * m):>8d}%" for m in marks))
    for label, curves in results.items():
        med = [statistics.median(max([h for d, h in c if d <= m * grid_docs], default=0.0) for c in curves.values())
               for m in marks]
        print(f"{label:50s} " + " ".join(f"{v:9.5f}" for v in med))
    print(f"{'grid, every document (random order, at 100%)':50s} " + " " * 30 + f"{grid_hv:9.5f}")
    (work / "search_racing.json").write_text(json.dumps(
        {"reference": reference, "grid_hv": grid_hv, "grid_documents": grid_docs, "rows": rows,
         "curves": {k: {str(s): c for s, c in v.items()} for k, v in results.items()}}, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("bench_out/search"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=22)
    ap.add_argument("--suites", default="medical5")
    ap.add_argument("--objectives", nargs="+", default=["heldout"], metavar="X Y",
                    help="'heldout' (default) or two suite scores (medmerge.evaluation.objectives)")
    ap.add_argument("--limit", type=int, default=8, help="documents per task")
    ap.add_argument("--num-fewshot", type=int, default=0)
    ap.add_argument("--space", choices=["same", "past"], default="same",
                    help="same: Optuna over the grid's own space made continuous (linear, slerp ratio); past: "
                         "also a per-layer slerp gradient t: [x0, x1, x2] and task arithmetic's lambda")
    ap.add_argument("--racing", action="store_true",
                    help="count cost in documents: the grid, the grid raced, Optuna raced and warm-started (issue 24)")
    ap.add_argument("--samplers", nargs="+", default=["tpe", "tpe-group", "gp"], help="with --racing")
    ap.add_argument("--first", type=int, default=8, help="with --racing: documents per corpus in round 1")
    ap.add_argument("--max-trials", type=int, default=80, help="with --racing: most trials per study")
    ap.add_argument("--warm-levels", type=float, nargs="+", default=[0.25, 0.75],
                    help="with --racing: the warm-start grid takes each range at these fractions of its span")
    ap.add_argument("--trial-first", type=int, default=4, help="with --racing: a trial's round 1, documents per corpus")
    ap.add_argument("--confidence", type=float, default=0.8,
                    help="with --racing: a trial's one-sided level (medmerge.selection.trial_race.TrialRace)")
    ap.add_argument("--min-gain", type=float, default=0.005,
                    help="with --racing: a trial stops when its upper corner adds less than this share of the ideal "
                         "box to the finished trials' hypervolume")
    args = ap.parse_args()

    import os

    work = args.workdir.resolve()
    os.environ.setdefault("MEDMERGE_CACHE_DIR", str(work / "cache"))
    models = work / "models"
    if not (models / "instruct" / "config.json").exists():
        subprocess.run([BIN / "medmerge", "demo-models", models, "-q"], check=True, stdout=subprocess.DEVNULL)

    from medmerge.evaluation import objectives
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import EvalSettings
    from medmerge.evaluation.sweep_eval import SweepEvaluator
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.merge.recipe import SweepSpec
    from medmerge.selection import optuna_search

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
    if args.racing:
        return racing_comparison(args, grid, space, ev, work)
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
