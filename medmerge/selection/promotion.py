"""Picks and promotion at the end of a merge search (the core the ``choose_picks`` and ``promote`` steps call).

**Picks** (``picks:`` in the run config) are the candidates phase two fine-tunes; each gets an alias
of the registered model (``models:/NAME@pick-linear``):

* ``best_per_method`` (the default): per method, the near-frontier merge best on the selection's y objective
  (Medical Avg by default; a candidate that reproduces a parent, ratio 0 or 1, is not a merge; a method with no merge near
  the frontier gets its best merge overall, so every family has a pick, as in the forgetting study, which
  fine-tunes SLERP t=0.4 and Linear α=0.5);
* ``knee``: the knee; ``near_frontier``: every near-frontier candidate;
* a list of candidate names.

A pick's alias is ``pick-<method>`` when it is its method's only pick, else ``pick-<candidate>``
(MLflow aliases take letters, digits, ``_`` and ``-``: a ``.`` becomes ``_``).

**Promotion** (``promote:``) moves ``@staging`` only after comparing. The policy names the candidate:
``knee``, ``best_medical`` (the best on the search's y objective, Medical Avg by default), a list of names
(the one of them best on y) or ``none``. That candidate is compared with the version ``@staging`` points at on the
search's objectives, each with its stderr: on objective *i* the difference d_i = c_i − s_i counts
only beyond one combined standard error, se_i = sqrt(se_c² + se_s²) (a missing stderr counts as 0).
The candidate is *dominated* when it is significantly worse on some objective (d_i < −se_i) and
significantly better on none (d_i > se_i); it is promoted only when it is not dominated. Nothing
staged yet: it is promoted. The staged version's scores and stderrs come from the run it was
registered from (:func:`staged_scores`); when they cannot be read the step fails, naming the version
and the reason, rather than decide on a guess. The finetune ``promote`` step applies the same rule
(:func:`against_staged`) on composite, Medical Avg and IF score. Either way the decision, both
versions' scores and the reason are logged to the parent run (``promotion.json``, tags
``promotion.*``, its description).
"""

from __future__ import annotations

import math
import re
from typing import Any, Union

from pydantic import BaseModel, Field, ValidationError

from medmerge.errors import MedmergeError
from medmerge.evaluation.report import MetricValue
from medmerge.tracking.registry import STAGE

PICK_KEYWORDS = ("best_per_method", "knee", "near_frontier")
POLICY_KEYWORDS = ("knee", "best_medical", "none")

Names = Union[str, tuple[str, ...]]


class PromotionError(MedmergeError):
    """An unknown policy or pick, or a name that is no candidate of the search."""


def check_picks(v: Names) -> Names:
    """``picks:`` as configured: a keyword or a non-empty list of names (checked against the candidates later)."""
    return _check(v, PICK_KEYWORDS, "picks")


def check_policy(v: Names) -> Names:
    """``promote:`` as configured: a keyword or a non-empty list of candidate names."""
    return _check(v, POLICY_KEYWORDS, "promote")


def _check(v, keywords, field):
    if isinstance(v, str):
        if v not in keywords:
            raise PromotionError(f"{field}: unknown policy {v!r}; use one of {', '.join(keywords)} "
                                 f"or a list of candidate names")
        return v
    v = tuple(v)
    if not v or not all(isinstance(n, str) and n for n in v):
        raise PromotionError(f"{field}: expected one of {', '.join(keywords)} or a non-empty list of candidate names")
    return v


def named(v: Names) -> tuple[str, ...]:
    """The candidate names a picks or promote setting lists (none for a keyword)."""
    return () if isinstance(v, str) else tuple(v)


def alias_for(name: str) -> str:
    return "pick-" + re.sub(r"[^\w-]", "_", name)


# ---------------------------------------------------------------------------------------------
# picks
# ---------------------------------------------------------------------------------------------

class Picks(BaseModel):
    """What ``choose_picks`` hands on: ``{alias: candidate}`` and the candidate promotion considers."""

    policy: Names
    picks: dict[str, str]
    promote_policy: Names = "none"
    promote_candidate: str | None = None


def _y_score(frontier):
    """A candidate's score on the selection's y objective (Medical Avg by default, ``-inf`` when it has none):
    what ``best_per_method`` and ``best_medical`` maximise."""
    from medmerge.evaluation.objectives import ObjectiveError, resolve

    objectives = getattr(getattr(frontier, "selection", None), "objectives", None) or {}
    name = objectives.get("y", "medical_avg")

    def score(cand) -> float:
        kept = getattr(cand.report, "scores", {}).get(name)   # a suite score, stored with the report
        if kept is not None:
            return kept.value
        try:   # a task metric, or a report written before its scores were stored
            value = resolve(name).score(cand.report)[0]
        except (ObjectiveError, KeyError, AttributeError):
            return float("-inf")
        return float("-inf") if value is None else value

    return score


def choose(picks: Names, promote: Names, frontier, results) -> Picks:
    """Resolve ``picks`` and the promotion policy against the search's candidates (``results``) and its
    ``frontier``; a name that is no candidate raises :class:`PromotionError` naming it."""
    by = results.by_name()
    for field, v in (("picks", picks), ("promote", promote)):
        for n in named(v):
            if n not in by:
                raise PromotionError(f"{field}: {n!r} names no candidate of this search "
                                     f"(candidates: {', '.join(sorted(by))})")
    near = [by[n] for n in frontier.near]
    y_of = _y_score(frontier)
    if picks == "best_per_method":
        def is_merge(c):   # a candidate that reproduces a parent (ratio 0 or 1) is no merge to pick
            return getattr(c, "role", None) is None and getattr(c, "ratio", None) not in (0.0, 1.0)

        best: dict[str, Any] = {}
        for pool in (near, results.candidates):   # a method with no merge near the frontier: its best merge
            for c in pool:   # ties keep the first (frontier order)
                if not is_merge(c) or (pool is not near and c.method in best and best[c.method] in near):
                    continue
                if c.method not in best or y_of(c) > y_of(best[c.method]):
                    best[c.method] = c
        chosen = list(best.values())
    elif picks == "knee":
        chosen = [by[frontier.knee]]
    elif picks == "near_frontier":
        chosen = near
    else:
        chosen = [by[n] for n in dict.fromkeys(picks)]
    per_method: dict[str, int] = {}
    for c in chosen:
        per_method[c.method] = per_method.get(c.method, 0) + 1
    out = {(alias_for(c.method) if per_method[c.method] == 1 else alias_for(c.name)): c.name for c in chosen}

    target = None
    if promote == "knee":
        target = frontier.knee
    elif promote == "best_medical":
        target = max(results.candidates, key=y_of).name
    elif promote != "none":
        target = max((by[n] for n in promote), key=y_of).name
    return Picks(policy=picks, picks=out, promote_policy=promote, promote_candidate=target)


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------

Score = MetricValue   # a value with its stderr: the evaluation report's own type


class PromotionDecision(BaseModel):
    policy: Names
    candidate: str | None = None
    version: str | None = None
    staged_version: str | None = None
    scores: dict[str, dict[str, Score]] = Field(default_factory=dict)   # "candidate"/"staged" -> objective -> score
    promoted: bool = False
    reason: str
    picks: dict[str, dict[str, str]] = Field(default_factory=dict)     # alias -> {candidate, version}

    def summary(self) -> str:
        if self.candidate is None:
            return f"promotion: policy {_policy_text(self.policy)}: {self.reason}"
        verb = "promoted" if self.promoted else "not promoted"
        return f"promotion ({_policy_text(self.policy)}): {self.candidate} v{self.version} {verb}: {self.reason}"


def _policy_text(p: Names) -> str:
    return p if isinstance(p, str) else "names " + ", ".join(p)


def compare(candidate: dict[str, Score], staged: dict[str, Score]) -> tuple[bool, str]:
    """``(dominated, reason)`` for the candidate against the staged version on their common objectives
    (see the module docstring for the rule)."""
    worse: list[str] = []
    better: list[str] = []
    even: list[str] = []
    for name, c in candidate.items():
        s = staged.get(name)
        if s is None:
            continue
        se = math.hypot(_stderr(c), _stderr(s))
        d = c.value - s.value
        text = f"{name} {c.value:.4f} vs {s.value:.4f} (±{se:.4f})"
        (worse if d < -se else better if d > se else even).append(text)
    if not (worse or better or even):
        return False, "no objective in common with the staged version"
    if worse and not better:
        return True, "dominated by the staged version: worse on " + "; ".join(worse) + (
            "; within the stderr on " + "; ".join(even) if even else "")
    parts = []
    if better:
        parts.append("better on " + "; ".join(better))
    if worse:
        parts.append("worse on " + "; ".join(worse))
    if even:
        parts.append("within the stderr on " + "; ".join(even))
    return False, "not dominated by the staged version: " + "; ".join(parts)


def _stderr(score: Score) -> float:
    """A score's stderr; a missing or non-finite one (lm-eval reports NaN for a single sample) counts as 0."""
    se = score.stderr
    return se if se is not None and math.isfinite(se) else 0.0


def report_scores(report, objectives) -> dict[str, Score]:
    out = {}
    for o in objectives:
        v, se = o.score(report)
        out[o.name] = Score(value=v, stderr=se)
    return out


def staged_scores(mv, objectives, tracking_uri: str) -> dict[str, Score]:
    """The staged version ``mv``'s scores on ``objectives`` (objectives, or score names), each with its stderr,
    read from the run it was registered from: a merge candidate's ``report.json``, else that run's metrics
    (``<name>`` or, for a fine-tuned model's benchmark re-check, ``after.<name>``, with ``<name>_stderr``).
    ``mv`` is the registry's record of the version (:class:`medmerge.tracking.registry.Version`).

    Raises :class:`PromotionError` naming the version and the reason when they cannot be read (no run, the run
    or its report unreadable, an objective it has no score for): the promotion is never decided on a guess."""
    from medmerge.evaluation.objectives import ObjectiveError
    from medmerge.evaluation.report import EvalReport
    from medmerge.tracking import registry

    where = f"{mv.name} v{mv.version} (@{STAGE})"
    advice = (f"; fix or re-register it, or move @{STAGE} by hand (medmerge promote {mv.name} VERSION), "
              "then rerun")
    if not mv.run_id:
        raise PromotionError(f"cannot read the scores of {where}: it was registered without a run" + advice)
    try:
        recorded = registry.run_scores(tracking_uri, mv.run_id)
    except MedmergeError as exc:
        raise PromotionError(f"cannot read the scores of {where}: {exc}" + advice) from exc
    if recorded.report_json is not None:
        from medmerge.evaluation.objectives import resolve

        try:
            out = report_scores(EvalReport.model_validate_json(recorded.report_json),
                                [resolve(o) if isinstance(o, str) else o for o in objectives])
        except (ValueError, ObjectiveError, KeyError) as exc:   # pydantic's ValidationError is a ValueError
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, ValidationError):
                first = exc.errors()[0]
                where_in = ".".join(str(x) for x in first.get("loc", ())) or "the file"
                reason = f"not an evaluation report ({where_in}: {first['msg']})"
            raise PromotionError(f"cannot read the scores of {where}: report.json of its run {mv.run_id}: "
                                 f"{reason}" + advice) from exc
    else:
        out = {}
        for o in objectives:
            name = o if isinstance(o, str) else o.name
            for key in (name, f"after.{name}"):
                if key in recorded.metrics:
                    out[name] = Score(value=recorded.metrics[key], stderr=recorded.metrics.get(f"{key}_stderr"))
                    break
            else:
                raise PromotionError(f"cannot read the scores of {where}: its run {mv.run_id} has no {name} score "
                                     f"(no report.json, no metric {name} or after.{name})" + advice)
    bad = next((n for n, v in out.items() if not math.isfinite(v.value)), None)
    if bad is not None:
        raise PromotionError(f"cannot compare with {where}: its {bad} is {out[bad].value}" + advice)
    return out


# ---------------------------------------------------------------------------------------------
# the step's work
# ---------------------------------------------------------------------------------------------

def against_staged(name: str, target: str, version: str, candidate: dict[str, Score], objectives,
                   tracking_uri: str) -> tuple[bool, str, dict[str, dict[str, Score]], str | None]:
    """The README's rule, for both promote steps: ``target`` (registered as ``version`` of ``name``, scored
    ``candidate``) against the version ``@staging`` points at, on ``objectives`` with both sides' stderr.
    Returns ``(promote, reason, scores, staged version)``; moves nothing. Raises :class:`PromotionError` when
    the staged version's scores cannot be read (:func:`staged_scores`)."""
    from medmerge.tracking import registry

    scores = {"candidate": candidate}
    staged = registry.staged_version(tracking_uri, name, STAGE)
    if staged is None:
        return True, f"nothing staged yet: {name} has no @{STAGE} version", scores, None
    if str(staged.version) == str(version):
        return False, f"{target} v{version} is already @{STAGE}", scores, str(staged.version)
    scores["staged"] = staged_scores(staged, objectives, tracking_uri)
    dominated, reason = compare(candidate, scores["staged"])
    return not dominated, f"against v{staged.version}: {reason}", scores, str(staged.version)


def promote_search(cfg, results, frontier, picks: Picks, versions: dict[str, str]) -> PromotionDecision:
    """Compare the policy's candidate with ``@staging`` (:func:`against_staged`); then point each pick's alias at
    its version and promote the candidate unless dominated; log the decision, both versions' scores and the
    reason to the parent run. Everything that can fail reading comes before anything moves."""
    from medmerge.tracking import registry

    uri = results.tracking_uri
    name = cfg.registered_model
    target = picks.promote_candidate
    pick_versions = {alias: {"candidate": cand, "version": versions[cand]} for alias, cand in picks.picks.items()}
    if target is None:
        decision = PromotionDecision(policy=picks.promote_policy, reason="promotion not asked for",
                                     picks=pick_versions)
    else:
        version = versions[target]
        objectives = cfg.objective_pair()
        promoted, reason, scores, staged = against_staged(
            name, target, version, report_scores(results.by_name()[target].report, objectives), objectives, uri)
        decision = PromotionDecision(policy=picks.promote_policy, candidate=target, version=version,
                                     staged_version=staged, scores=scores, promoted=promoted, reason=reason,
                                     picks=pick_versions)
    for alias, p in pick_versions.items():
        registry.set_alias(name, alias, p["version"], uri, tag="pick")
    if decision.promoted and decision.version is not None:
        decision.reason += "; " + registry.promote(name, decision.version, uri, stage=STAGE)
    # the last step: it closes the parent run; on a rerun (the parent closed) it logs to a nested run instead
    run = results.parent_run().open_or_nested("promotion")
    if results.candidates:   # what the search was scored on (digests, never rows)
        from medmerge.tracking import datasets

        run.datasets(datasets.evaluation_datasets(results.candidates[0].report))
    log_decision(run, decision, frontier)
    run.finish()
    return decision


def log_decision(run, decision: PromotionDecision, frontier=None) -> None:
    """``promotion.json``, ``promotion.*`` tags and the run's description (frontier, picks, promotion) on
    ``run`` (a :class:`medmerge.tracking.runs.Run`)."""
    run.json(decision.model_dump(mode="json"), "promotion.json")
    run.tags({"promotion.decision": "promoted" if decision.promoted else "not promoted",
              "promotion.reason": decision.reason[:5000]})
    values = {}
    for who, scores in decision.scores.items():
        for obj, s in scores.items():
            values[f"promotion.{who}.{obj}"] = s.value
            if s.stderr is not None:
                values[f"promotion.{who}.{obj}_stderr"] = s.stderr
    run.metrics(values)
    lines = []
    if frontier is not None:
        hv = "" if frontier.hypervolume is None else f", hypervolume {frontier.hypervolume:.6f}"
        lines.append(f"**Frontier**: {', '.join(frontier.frontier)} (knee {frontier.knee}; "
                     f"{len(frontier.near)} near-frontier{hv}).")
    if decision.picks:
        lines.append("**Picks**: " + ", ".join(f"`@{a}` = {p['candidate']} (v{p['version']})"
                                              for a, p in decision.picks.items()) + ".")
    lines.append("**Promotion**: " + decision.summary() + ".")
    run.describe("\n\n".join(lines))


# ---------------------------------------------------------------------------------------------
# phase two: the fine-tuned models
# ---------------------------------------------------------------------------------------------

FINETUNE_POLICY_KEYWORDS = ("best_composite", "none")


def check_finetune_policy(v: Names) -> Names:
    """``promote:`` of a finetune run: ``best_composite`` (the best composite among the models that passed their
    forgetting gate), a list of ``<initialisation>-<shots>`` names, or ``none``."""
    return _check(v, FINETUNE_POLICY_KEYWORDS, "promote")


def _sft_scores(r) -> dict[str, Score]:
    from medmerge.evaluation.objectives import ObjectiveError, resolve

    out = {"composite": Score(value=r.scores["composite"])}
    for name in r.after.scores or ("medical_avg", "if_score"):   # the forgetting re-check's suite scores
        try:
            v, se = resolve(name).score(r.after)
        except (ObjectiveError, KeyError):
            continue   # the forgetting re-check did not run that suite
        out[name] = Score(value=v, stderr=se)
    return out


def promote_finetuned(cfg, run, results, versions: dict[str, str]) -> PromotionDecision:
    """The finetune ``promote`` step: the policy's fine-tuned model against ``@staging`` of
    ``cfg.registered_model`` on composite, Medical Avg and IF score, each with both sides' stderr (the staged
    version's from its run; :func:`against_staged`); promoted unless dominated. A model whose forgetting gate
    failed is never chosen by ``best_composite`` and is refused by name (``medmerge promote --force`` is for
    people)."""
    from medmerge.tracking import registry

    policy = cfg.promote
    by = {f"{r.init}-{r.shots}": r for r in results if f"{r.init}-{r.shots}" in versions}
    target = None
    if policy == "best_composite":
        passed = [k for k, r in by.items() if r.forgetting.passed]
        target = max(passed, key=lambda k: by[k].scores["composite"]) if passed else None
        reason = "no fine-tuned model passed its forgetting gate: nothing promoted"
    elif policy != "none":
        target = max(policy, key=lambda k: by[k].scores["composite"])
        reason = ""
    else:
        reason = "promotion not asked for"
    if target is None:
        decision = PromotionDecision(policy=policy, reason=reason)
    else:
        version = versions[target]
        candidate = _sft_scores(by[target])
        if not by[target].forgetting.passed:
            held = registry.staged_version(run.tracking_uri, cfg.registered_model, STAGE)
            promoted, scores = False, {"candidate": candidate}
            reason = f"{target} failed its forgetting gate ({by[target].forgetting.failures[0].score})"
            staged = None if held is None else str(held.version)
        else:
            promoted, reason, scores, staged = against_staged(cfg.registered_model, target, version, candidate,
                                                              list(candidate), run.tracking_uri)
        decision = PromotionDecision(policy=policy, candidate=target, version=version, scores=scores,
                                     staged_version=staged, promoted=promoted, reason=reason)
    if decision.promoted and decision.version is not None:
        decision.reason += "; " + registry.promote(cfg.registered_model, decision.version, run.tracking_uri,
                                                   stage=STAGE)
    # the last step: it closes the parent run; on a rerun (the parent closed) it logs to a nested run instead
    parent = run.parent_run().open_or_nested("promotion")
    log_decision(parent, decision)
    parent.finish()
    return decision
