"""``evaluation: racing`` in merge_search: a grid's candidates raced on growing batches of documents.

:mod:`medmerge.selection.racing` decides; this module feeds it real evaluations. Each task of the suites is a
stratum of documents (its evaluation split, or the first ``limit`` documents); each round, every running
candidate is merged into the one resident model and scored by lm-eval on the round's new documents of every
task at once (lm-eval's ``samples``: the documents of one fixed, seeded order, the same for every candidate).
A document's value for the race is its share of the objective it feeds: a task's accuracy for Medical Avg,
a suite mean or a task objective; for IF score ``(prompt-level strict + instructions followed / k̄) / 2``,
with ``k̄`` the mean number of instructions per prompt over the task's documents, so the mean over prompts is
IF score exactly.

What comes out is what full evaluation gives, for every candidate that reaches the selection: a survivor has
been scored on every document, and its report is aggregated from those per-document values by lm-eval's own
aggregation code (value and stderr), equal to one lm-eval run over the same documents; it is stored in the
evaluation cache under the keys a full evaluation uses, so a later full evaluation of it scores nothing. A
stopped candidate keeps a partial report (the documents it used, marked ``settings["racing"]``) and stays out
of the frontier, the picks and promotion. Every range's per-document results are cached on disk
(:class:`~medmerge.evaluation.cache.DocumentCache`), so a killed race's rerun replays its finished rounds
without scoring.

Documents are scored independently only when no few-shot examples are drawn (lm-eval draws them in sequence
over the documents it runs), so racing is zero-shot: the forgetting study's suites. The configuration checks
that, and the other conditions, before anything runs (:func:`check_racing`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from medmerge.errors import MedmergeError
from medmerge.evaluation.report import EvalReport
from medmerge.merge.recipe import SweepCandidate
from medmerge.selection import racing


class RacingOptions(BaseModel):
    """Racing's settings (``racing:`` in a merge_search config; :mod:`medmerge.selection.racing` says why these
    defaults): ``confidence`` that every bound holds, so that the near set and knee come out as full evaluation's
    (Bonferroni over candidates, objectives and rounds); ``first`` documents per task in round 1, ``growth``
    per round; ``seed`` fixes the document order."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    first: int = Field(32, ge=2)
    growth: float = Field(2.0, gt=1.0, allow_inf_nan=False)
    seed: int = 0


class RaceSearchError(MedmergeError):
    """A configuration racing cannot run (few-shot tasks, workers, an Optuna search, an objective that is not a
    mean over documents)."""


def check_racing(cfg) -> None:
    """Refuse, before anything runs, what racing cannot do; nothing is raised for ``evaluation: full``."""
    from medmerge.evaluation.tasks import load_suites

    if cfg.evaluation != "racing":
        return
    if cfg.sweep.search == "optuna":
        raise RaceSearchError("evaluation: racing races a grid's candidates; an Optuna search (search: optuna) "
                              "evaluates each trial in full")
    if cfg.workers != 1:
        raise RaceSearchError(f"evaluation: racing runs its rounds in one process; set workers: 1 "
                              f"(got {cfg.workers})")
    if cfg.log_samples:
        raise RaceSearchError("log_samples records every document of one lm-eval run; racing scores documents in "
                              "rounds: use evaluation: full to log samples")
    suites = load_suites()
    for suite in cfg.suites:
        shots = cfg.num_fewshot if cfg.num_fewshot is not None else suites[suite].get("num_fewshot", 0)
        if shots:
            raise RaceSearchError(f"evaluation: racing is zero-shot only (suite {suite} runs {shots}-shot: lm-eval "
                                  "draws few-shot examples in sequence, so a document's score would depend on "
                                  "which documents ran before it); set num_fewshot: 0 or use evaluation: full")


RACE_SHOTS = 0   # racing is zero-shot (check_racing): its task objects are the ones scored at 0 shots


@dataclass
class RacedSweep:
    """The race's outcome: ``full`` (candidate, full-suite report) for every survivor, ``stopped`` (candidate,
    partial report) for the others, and the race itself (its record: each candidate's course)."""

    full: list[tuple[SweepCandidate, EvalReport]]
    stopped: list[tuple[SweepCandidate, EvalReport]]
    result: racing.RaceResult


def _metric(doc: dict, metric: str) -> Any:
    """A document's lm-eval value of ``metric`` (under whichever filter the task has)."""
    for key, value in doc.items():
        if key.split(",", 1)[0] == metric:
            return value
    raise RaceSearchError(f"lm-eval gave no {metric} for a document (it gave: {', '.join(doc)})")


def _metric_value(doc: dict, metric: str) -> float:
    return float(_metric(doc, metric))


def _if_value(doc: dict, kbar: float) -> float:
    """``(prompt-level strict + instructions followed / k̄) / 2``: its mean over prompts is IF score."""
    from medmerge.evaluation.scores import IF_METRICS

    return (float(_metric(doc, IF_METRICS[0])) + sum(map(float, _metric(doc, IF_METRICS[1]))) / kbar) / 2


def _unweighted(doc: dict) -> float:
    return 0.0


def _value_functions(objectives, ev) -> tuple[list[racing.Stratum], tuple[racing.Objective, ...], dict]:
    """Strata (one per task of the suites), the objectives as weights on them, and per task the function from a
    document's lm-eval values to its value in the race."""
    from lm_eval.api.metrics import mean

    from medmerge.evaluation.tasks import suite_tasks

    tasks = list(dict.fromkeys(t for ts in suite_tasks(list(ev.settings.suites)).values() for t in ts))
    owner: dict[str, str] = {}
    value_of: dict[str, Callable[[dict], float]] = {}
    strata: dict[str, racing.Stratum] = {}
    weights: list[dict[str, float]] = []

    for o in objectives:
        w: dict[str, float] = {}
        for task in o.tasks:
            if task in owner:
                raise RaceSearchError(f"objectives {owner[task]!r} and {o.name!r} both read task {task}; racing needs "
                                      "each task to feed one objective (use evaluation: full)")
            owner[task] = o.name
            task_obj = ev.task_object(task, RACE_SHOTS)
            n = ev.document_count(task, RACE_SHOTS)
            w[task] = 1.0 / len(o.tasks)
            if o.kind == "if_score":
                k = np.array([len(d["instruction_id_list"]) for d in list(task_obj.eval_docs)[:n]], dtype=float)
                kbar = float(k.mean())
                value_of[task] = partial(_if_value, kbar=kbar)
                strata[task] = racing.Stratum(task, n, 0.0, (1.0 + float(k.max()) / kbar) / 2)
                continue
            aggregations = task_obj.aggregation()
            metric = o.metric or ("acc" if "acc" in aggregations else next(iter(aggregations)))
            if aggregations.get(metric) is not mean:
                raise RaceSearchError(f"objective {o.name!r}: {task}'s {metric} is not a mean over documents, so "
                                      "it cannot be raced; use evaluation: full")
            value_of[task] = partial(_metric_value, metric=metric)
            strata[task] = racing.Stratum(task, n)
        weights.append(w)
    for task in tasks:   # a suite's task no objective reads: scored with the rest (its report needs it), weight 0
        if task not in strata:
            strata[task] = racing.Stratum(task, ev.document_count(task, RACE_SHOTS))
            value_of[task] = _unweighted
    objs = tuple(racing.Objective(o.name, w) for o, w in zip(objectives, weights))
    return [strata[t] for t in tasks], objs, value_of


def race_grid(cfg, cache, quiet: bool = False,
              on_round: Callable[[int, racing.RaceResult], None] | None = None) -> RacedSweep:
    """Race the grid of ``cfg`` (a :class:`~medmerge.selection.search.SearchConfig` with ``evaluation: racing``)
    in memory, one resident model; ``cache`` an :class:`~medmerge.evaluation.cache.EvalCache` (its folder also
    holds the per-document ranges); ``on_round(r, result so far)`` after each round's decisions."""
    from tqdm.auto import tqdm

    from medmerge.evaluation.cache import DocumentCache
    from medmerge.evaluation.runner import make_report, task_result_of
    from medmerge.evaluation.sweep_eval import SweepEvaluator

    check_racing(cfg)
    t0 = time.perf_counter()
    spec, settings, opts = cfg.sweep, cfg.eval_settings(), cfg.racing
    candidates = spec.evaluated_candidates()
    sev = SweepEvaluator(spec, settings, cache)
    ev = sev.evaluator
    plans = [sev.plan(c) for c in candidates]
    by_name = {c.name: (c, p) for c, p in zip(candidates, plans)}
    identities = {c.name: sev.identity(c) for c in candidates}
    strata, objectives, value_of = _value_functions(cfg.objective_pair(), ev)
    plan = racing.RacingPlan(tuple(strata), objectives, first=opts.first, growth=opts.growth,
                             confidence=opts.confidence, eps=cfg.eps, use_stderr=cfg.use_stderr, seed=opts.seed)
    docs_cache = DocumentCache(cache.root / "documents")
    part = settings.cache_part(0, ev.max_gen_toks, ev.dtype, ev.prompt_format)
    raw: dict[str, dict[str, dict[int, dict]]] = {c.name: {s.name: {} for s in strata} for c in candidates}
    resident: list[str | None] = [None]
    bar = tqdm(total=plan.full_documents(len(candidates)), desc="racing candidates (documents)", disable=quiet,
               unit="doc")

    def batch(name: str, ranges: list[racing.DocRange]) -> list[np.ndarray]:
        ident = identities[name]
        out: dict[str, list[dict]] = {}
        keys = {r.stratum: DocumentCache.key(ident, ev.spec(r.stratum).config_hash, part, r.documents) for r in ranges}
        todo = {}
        for r in ranges:
            hit = docs_cache.get(keys[r.stratum], len(r.documents))
            if hit is None:
                todo[r.stratum] = list(r.documents)
            else:
                out[r.stratum] = hit
        if todo:
            if resident[0] != name:
                cand, p = by_name[name]
                sev.swap_in(cand, p, plans)
                resident[0] = name
            for task, docs in ev.run_documents(todo, RACE_SHOTS).items():
                docs_cache.put(keys[task], docs)
                out[task] = docs
        values = []
        for r in ranges:
            raw[name][r.stratum].update(zip(r.documents, out[r.stratum]))
            values.append(np.array([value_of[r.stratum](d) for d in out[r.stratum]]))
            bar.update(len(r.documents))
        return values

    def after_round(r: int, res: racing.RaceResult) -> None:
        running = sum(not c.stopped for c in res.candidates)
        bar.set_postfix_str(f"round {r}, {running} of {len(res.candidates)} running")
        if on_round is not None:
            on_round(r, res)

    result = racing.race(plan, [c.name for c in candidates], cache=None, on_round=after_round, batch=batch)
    bar.close()
    seconds = (time.perf_counter() - t0) / len(candidates)   # the race's time, shared by its candidates

    full, stopped = [], []
    for course in result.candidates:
        cand, _ = by_name[course.name]
        ident = identities[course.name]
        results = {}
        for s in strata:
            docs = [d for _, d in sorted(raw[course.name][s.name].items())]
            results[s.name] = task_result_of(ev.task_object(s.name, RACE_SHOTS), ev.spec(s.name), docs, RACE_SHOTS,
                                             settings.bootstrap_iters)
        report = make_report(cand.name, f"candidate:{ident}", results, settings, seconds, [],
                             max_gen_toks=ev.max_gen_toks, dtype=ev.dtype, prompt_format=ev.prompt_format)
        if course.stopped:
            record = course.record(int(plan.sizes.sum()))
            report = report.model_copy(update={"settings": {**report.settings, "racing": record}})
            stopped.append((cand, report))
            continue
        for _, _hits, todo, keys in ev.lookup(ident, cache):   # what a later full evaluation reads: nothing to score
            for spec_ in todo:
                if keys.get(spec_.name):
                    cache.put(keys[spec_.name], results[spec_.name])
        full.append((cand, report))
    return RacedSweep(full, stopped, result)
