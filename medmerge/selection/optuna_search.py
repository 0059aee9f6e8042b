"""``search: optuna``: a multi-objective search over methods and continuous parameter ranges.

Optuna proposes each candidate from the sweep's space (a method, then each of its grid entries:
a ``{low, high}`` range is a float, a ``gradient: n`` range n floats that mergekit interpolates
across layers, a list a categorical choice, a scalar a fixed value); the candidate is merged in
memory and evaluated, and its two objectives (both maximised) are told to the study. The study
lives in a persistent storage (sqlite or any SQLAlchemy URL), so a killed search resumes: trials
already complete are kept, and a trial the kill interrupted is evaluated again with the same
parameters (enqueued) while the budget counts complete trials only.

Sampler: TPE (multi-objective, ``multivariate``). With budgets of 8–22 evaluations NSGA-II is
the wrong tool: its first generation (a population, 50 by default) is plain random sampling
and it improves only generation by generation, so at this budget it is a random search. TPE
fits its good/bad densities from every finished trial after ``n_startup_trials`` random ones,
and handles a conditional space (each method's own parameters) natively.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

from medmerge.merge.recipe import RATIO, Range, SweepCandidate, SweepSpec

N_STARTUP_TRIALS = 5


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def suggest(trial, spec: SweepSpec) -> tuple[str, dict]:
    """``(method, params)`` for one trial: the method, then each of its grid entries."""
    grids = spec.grids()
    methods = list(grids)
    method = trial.suggest_categorical("method", methods) if len(methods) > 1 else methods[0]
    params = {}
    for key, values in grids[method].items():
        name = f"{method}.{key}"
        if isinstance(values, Range):
            if values.gradient:
                params[key] = [trial.suggest_float(f"{name}[{i}]", values.low, values.high, log=values.log)
                               for i in range(values.gradient)]
            else:
                params[key] = trial.suggest_float(name, values.low, values.high, log=values.log)
        elif len(values) == 1:
            params[key] = values[0]
        else:
            choices = [json.dumps(v) for v in values]
            params[key] = json.loads(trial.suggest_categorical(name, choices))
    return method, params


def trial_name(number: int, method: str) -> str:
    return f"trial-{number:03d}-{method}"


def study_name(spec: SweepSpec, objectives: tuple[str, str], extra: dict) -> str:
    """The same space, objectives, evaluation and parents give the same study (the budget is left out:
    raising it continues the study)."""
    key = {"spec": spec.model_dump(mode="json", exclude={"budget"}), "objectives": list(objectives), **extra}
    return "medmerge-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


SAMPLERS = ("tpe", "tpe-group", "gp")


def make_sampler(kind: str, seed: int, n_startup_trials: int = N_STARTUP_TRIALS):
    """``tpe``: multivariate TPE; ``tpe-group``: multivariate TPE that models each method's own parameters as a
    group (``group=True``: a conditional space's subspaces apart); ``gp``: Optuna's Gaussian-process sampler
    (multi-objective since Optuna 4.2; needs scipy and torch)."""
    optuna = _optuna()
    import warnings

    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; one of {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():   # multivariate TPE, group and GP are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "gp":
            # GP models only the parameters every trial has: with several methods, each method's own
            # parameters are drawn at random (Optuna's documented fallback for a dynamic space)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials,
                                             warn_independent_sampling=False)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=kind == "tpe-group",
                                          n_startup_trials=n_startup_trials)


def open_study(storage: str | None, name: str, seed: int, sampler: str = "tpe"):
    """Create or load the study; a trial left RUNNING by a killed process is failed and its parameters
    enqueued, so the next ask evaluates that candidate again."""
    optuna = _optuna()
    from optuna.trial import TrialState

    sampler = make_sampler(sampler, seed)
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "maximize"],
                                sampler=sampler, load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params)
    return study


def complete_trials(study) -> list:
    from optuna.trial import TrialState

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def candidate_of(spec: SweepSpec, trial) -> SweepCandidate:
    """The candidate a finished (or enqueued and asked) trial stands for."""
    method, params = json.loads(trial.user_attrs["candidate"]) if "candidate" in trial.user_attrs \
        else suggest(trial, spec)
    return spec.candidate(method, params, name=trial_name(trial.number, method))


def run_study(spec: SweepSpec, evaluate: Callable, score: Callable, *, storage: str | None, name: str,
              on_trial: Callable | None = None) -> list[tuple[SweepCandidate, object]]:
    """Run trials until ``spec.budget`` are complete; ``(candidate, report)`` for every complete trial in
    trial order (those finished before a resume are re-evaluated from the evaluation cache).

    ``evaluate(candidate) -> report``; ``score(report) -> (x, y)``, both maximised;
    ``on_trial(n_complete)`` is called after each round's trials are told (progress, tests)."""
    study = open_study(storage, name, spec.seed)
    return study_results(study, spec, lambda cands: [evaluate(c) for c in cands], score, on_trial)


def study_results(study, spec: SweepSpec, evaluate_many: Callable, score: Callable,
                  on_trial: Callable | None = None) -> list[tuple[SweepCandidate, object]]:
    """The rounds still missing (:func:`run_rounds`), then ``(candidate, report)`` for the study's first
    ``spec.budget`` complete trials in trial order: this call's as evaluated, a resumed study's earlier ones
    evaluated again together (``evaluate_many``: from the evaluation cache). One worker and a batched search
    on N workers both end here."""
    reports = run_rounds(study, spec, evaluate_many, score, on_trial)
    complete = complete_trials(study)[:spec.budget]
    earlier = [t for t in complete if t.number not in reports]
    if earlier:
        cands = [candidate_of(spec, t) for t in earlier]
        for t, cand, report in zip(earlier, cands, evaluate_many(cands), strict=True):
            reports[t.number] = (cand, report)
    return [reports[t.number] for t in complete]


def run_rounds(study, spec: SweepSpec, evaluate_many: Callable, score: Callable,
               on_trial: Callable | None = None) -> dict[int, tuple[SweepCandidate, object]]:
    """Until ``spec.budget`` trials are complete, ask ``batch: B`` trials (one without it; the sampler sees the
    trials told in earlier rounds, never this round's), evaluate them together (``evaluate_many(candidates) -> reports`` in
    the same order, however many workers share them) and tell them in trial order. Ask and tell happen here
    only, in one order, so the trials and their results are those of one worker. ``{number: (candidate,
    report)}`` of this call's trials."""
    reports: dict[int, tuple[SweepCandidate, object]] = {}
    budget = spec.budget or 0   # set for search: optuna (the spec refuses one without it)
    while (n := len(complete_trials(study))) < budget:
        trials = [study.ask() for _ in range(min(spec.batch or 1, budget - n))]
        cands = []
        for trial in trials:
            method, params = suggest(trial, spec)
            trial.set_user_attr("candidate", json.dumps([method, params]))
            cands.append(spec.candidate(method, params, name=trial_name(trial.number, method)))
        for trial, cand, report in zip(trials, cands, evaluate_many(cands), strict=True):
            study.tell(trial, list(score(report)))
            reports[trial.number] = (cand, report)
        if on_trial is not None:
            on_trial(len(complete_trials(study)))
    return reports


COARSE_LEVELS = (0.25, 0.5, 0.75)


def coarse_grid(spec: SweepSpec, levels=COARSE_LEVELS) -> list[dict]:
    """A coarse grid of the space as Optuna trial parameters (for ``study.enqueue_trial``): every method, each
    range at ``levels`` of its span (in log space for a log range; a gradient constant across layers at each
    level), every choice of a list, fixed values as they are; the product over a method's entries."""
    import itertools

    out = []
    for method, grid in spec.grids().items():
        axes = []
        for key, values in grid.items():
            name = f"{method}.{key}"
            if isinstance(values, Range):
                lo, hi = (math.log(values.low), math.log(values.high)) if values.log else (values.low, values.high)
                pts = sorted({math.exp(lo + f * (hi - lo)) if values.log else lo + f * (hi - lo) for f in levels})
                names = [f"{name}[{i}]" for i in range(values.gradient)] if values.gradient else [name]
                axes.append([{n: v for n in names} for v in pts])
            elif len(values) > 1:
                axes.append([{name: json.dumps(v)} for v in values])
        for combo in itertools.product(*axes):
            params: dict[str, Any] = {"method": method} if len(spec.grids()) > 1 else {}
            for part in combo:
                params.update(part)
            out.append(params)
    return out


def frontier_bisection(spec: SweepSpec, scored: list[tuple[dict, float, float]],
                       gain: Callable[[tuple[float, float]], float], tried: set[str]) -> list[dict]:
    """The next trials to enqueue where the frontier has gaps, at most one per method: for every two trials
    scored in full (``(params, x, y)``, Optuna's parameter names) of the same method and the same choices,
    the midpoint of their ranges' values (geometric for a log range), whose objectives are guessed as the
    midpoint of the chord between the two; per method, the pair whose guess ``gain`` (what a point adds to
    the hypervolume) rates highest, if above 0 and not already in ``tried`` (its JSON key is then added).
    Best first; empty when no pair qualifies (the sampler proposes).

    Why: merges of one pair of parents trace smooth trade-off curves in their mixing ratio, and a
    frontier's hypervolume is paid for by points spread along such a curve. The chord's midpoint is the
    guess a concave curve beats; it cannot tell which method's curve bows out more, so each method gets its
    proposal and racing the few proposals together (a poor one costs a round) decides."""
    logs = {f"{m}.{k}" for m, grid in spec.grids().items() for k, v in grid.items()
            if isinstance(v, Range) and v.log}
    best: dict[str, tuple[float, dict, str]] = {}
    for i, (p, x1, y1) in enumerate(scored):
        for q, x2, y2 in scored[i + 1:]:
            if p.keys() != q.keys() or any(p[k] != q[k] for k in p if not isinstance(p[k], float)):
                continue
            mid: dict[str, Any] = {}
            for k, v in p.items():
                if not isinstance(v, float):
                    mid[k] = v
                elif k.split("[")[0] in logs:
                    mid[k] = math.sqrt(v * q[k])
                else:
                    mid[k] = (v + q[k]) / 2
            key = json.dumps(mid, sort_keys=True)
            if mid == p or mid == q or key in tried:
                continue
            g = gain(((x1 + x2) / 2, (y1 + y2) / 2))
            method = str(p.get("method", ""))
            if g > 0 and (method not in best or g > best[method][0]):
                best[method] = (g, mid, key)
    out = sorted(best.values(), key=lambda b: -b[0])
    tried.update(key for _, _, key in out)
    return [mid for _, mid, _ in out]


def representatives(spec: SweepSpec) -> list[SweepCandidate]:
    """One candidate per method of the space (the parents read the same tensors whatever the values)."""
    return [spec.candidate(m, spec.first_params(m)) for m in spec.grids()]


__all__ = ["RATIO", "frontier_bisection", "coarse_grid", "run_study", "suggest", "open_study", "study_name", "representatives", "complete_trials"]
