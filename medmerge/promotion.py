"""Picks and promotion at the end of a merge search (the core the ``choose_picks`` and ``promote`` steps call).

**Picks** (``picks:`` in the run config) are the candidates phase two fine-tunes; each gets an alias
of the registered model (``models:/NAME@pick-linear``):

* ``best_per_method`` (the default): per method, the near-frontier merge with the best Medical Avg
  (a candidate that reproduces a parent, ratio 0 or 1, is not a merge; a method with no merge near
  the frontier gets its best merge overall, so every family has a pick, as in the first seed, which
  fine-tunes SLERP t=0.4 and Linear α=0.5);
* ``knee``: the knee; ``near_frontier``: every near-frontier candidate;
* a list of candidate names.

A pick's alias is ``pick-<method>`` when it is its method's only pick, else ``pick-<candidate>``
(MLflow aliases take letters, digits, ``_`` and ``-``: a ``.`` becomes ``_``).

**Promotion** (``promote:``) moves ``@staging`` only after comparing. The policy names the candidate:
``knee``, ``best_medical`` (the best Medical Avg), a list of names (the one with the best Medical Avg
among them) or ``none``. That candidate is compared with the version ``@staging`` points at on the
search's objectives, each with its stderr: on objective *i* the difference d_i = c_i − s_i counts
only beyond one combined standard error, se_i = sqrt(se_c² + se_s²) (a missing stderr counts as 0).
The candidate is *dominated* when it is significantly worse on some objective (d_i < −se_i) and
significantly better on none (d_i > se_i); it is promoted only when it is not dominated. Nothing
staged yet: it is promoted. Either way the decision, both versions' scores and the reason are
logged to the search's parent run (``promotion.json``, tags ``promotion.*``, its description).
"""

from __future__ import annotations

import json
import math
import re
from typing import Union

from pydantic import BaseModel, Field

from medmerge.errors import MedmergeError
from medmerge.evaluation.report import MetricValue

PICK_KEYWORDS = ("best_per_method", "knee", "near_frontier")
POLICY_KEYWORDS = ("knee", "best_medical", "none")
STAGE = "staging"

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


def _medical(cand) -> float:
    r = cand.report
    return r.medical_avg if r.medical_avg is not None else float("-inf")


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
    if picks == "best_per_method":
        def is_merge(c):   # a candidate that reproduces a parent (ratio 0 or 1) is no merge to pick
            return getattr(c, "role", None) is None and getattr(c, "ratio", None) not in (0.0, 1.0)

        best: dict[str, object] = {}
        for pool in (near, results.candidates):   # a method with no merge near the frontier: its best merge
            for c in pool:   # ties keep the first (frontier order)
                if not is_merge(c) or (pool is not near and c.method in best and best[c.method] in near):
                    continue
                if c.method not in best or _medical(c) > _medical(best[c.method]):
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
        target = max(results.candidates, key=_medical).name
    elif promote != "none":
        target = max((by[n] for n in promote), key=_medical).name
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
    worse, better, even = [], [], []
    for name, c in candidate.items():
        s = staged.get(name)
        if s is None:
            continue
        se = math.hypot(c.stderr or 0.0, s.stderr or 0.0)
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


def report_scores(report, objectives) -> dict[str, Score]:
    out = {}
    for o in objectives:
        v, se = o.score(report)
        out[o.name] = Score(value=v, stderr=se)
    return out


def _staged_scores(mv, objectives, tracking_uri: str) -> dict[str, Score]:
    """The staged version's scores: from its candidate run's ``report.json`` (values and stderrs), else its
    ``medical_avg``/``if_score`` tags (no stderr)."""
    from medmerge.evaluation.report import EvalReport
    from medmerge.tracking import runs

    if mv.run_id:
        try:
            text = runs.load_text(tracking_uri, mv.run_id, "report.json")
            return report_scores(EvalReport.model_validate_json(text), objectives)
        except Exception:
            pass
    out = {}
    for o in objectives:
        if mv.tags.get(o.name) not in (None, "None"):
            out[o.name] = Score(value=float(mv.tags[o.name]))
    return out


# ---------------------------------------------------------------------------------------------
# the step's work
# ---------------------------------------------------------------------------------------------

def promote_search(cfg, results, frontier, picks: Picks, versions: dict[str, str]) -> PromotionDecision:
    """Point each pick's alias at its version; compare the policy's candidate with ``@staging`` and promote it
    unless dominated; log the decision, both versions' scores and the reason to the parent run."""
    from medmerge.tracking import registry, runs

    uri = results.tracking_uri
    name = cfg.registered_model
    pick_versions = {}
    for alias, cand in picks.picks.items():
        registry.set_alias(name, alias, versions[cand], uri, tag="pick")
        pick_versions[alias] = {"candidate": cand, "version": versions[cand]}

    target = picks.promote_candidate
    if target is None:
        decision = PromotionDecision(policy=picks.promote_policy, reason="promotion not asked for",
                                     picks=pick_versions)
    else:
        by = results.by_name()
        objectives = cfg.objective_pair()
        version = versions[target]
        scores = {"candidate": report_scores(by[target].report, objectives)}
        staged = registry.staged_version(uri, name, STAGE)
        if staged is None:
            promoted, reason = True, f"nothing staged yet: {name} has no @{STAGE} version"
        elif str(staged.version) == str(version):
            promoted, reason = False, f"{target} v{version} is already @{STAGE}"
        else:
            scores["staged"] = _staged_scores(staged, objectives, uri)
            dominated, reason = compare(scores["candidate"], scores["staged"])
            promoted = not dominated
            reason = f"against v{staged.version}: {reason}"
        if promoted:
            reason += "; " + registry.promote(name, version, uri, stage=STAGE)
        decision = PromotionDecision(policy=picks.promote_policy, candidate=target, version=version,
                                     staged_version=None if staged is None else str(staged.version), scores=scores,
                                     promoted=promoted, reason=reason, picks=pick_versions)
    # the last step: it closes the parent run; on a rerun (the parent closed) it logs to a nested run instead
    target = runs.Run(uri, results.parent_run_id, results.experiment_id).open_or_nested("promotion")
    if results.candidates:   # what the search was scored on (digests, never rows)
        from medmerge.tracking import datasets

        target.datasets(datasets.evaluation_datasets(results.candidates[0].report))
    log_decision(target, decision, frontier)
    target.finish()
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


def decision_json(decision: PromotionDecision) -> str:
    return json.dumps(decision.model_dump(mode="json"), indent=2)


# ---------------------------------------------------------------------------------------------
# phase two: the fine-tuned models
# ---------------------------------------------------------------------------------------------

FINETUNE_POLICY_KEYWORDS = ("best_composite", "none")
FINETUNE_OBJECTIVES = ("composite", "medical_avg", "if_score")


def check_finetune_policy(v: Names) -> Names:
    """``promote:`` of a finetune run: ``best_composite`` (the best composite among the models that passed their
    forgetting gate), a list of ``<initialisation>-<shots>`` names, or ``none``."""
    return _check(v, FINETUNE_POLICY_KEYWORDS, "promote")


def _sft_scores(r) -> dict[str, Score]:
    from medmerge.objectives import ObjectiveError, resolve

    out = {"composite": Score(value=r.scores["composite"])}
    for name in ("medical_avg", "if_score"):
        try:
            v, se = resolve(name).score(r.after)
        except (ObjectiveError, KeyError):
            continue   # the forgetting re-check did not run that suite
        out[name] = Score(value=v, stderr=se)
    return out


def promote_finetuned(cfg, run, results, versions: dict[str, str]) -> PromotionDecision:
    """The finetune ``promote`` step: the policy's fine-tuned model against ``@staging`` of
    ``cfg.registered_model`` on composite, Medical Avg and IF score (the staged version's from its tags);
    promoted unless dominated. A model whose forgetting gate failed is never chosen by ``best_composite``
    and is refused by name (``medmerge promote --force`` is for people)."""
    from medmerge.tracking import registry, runs

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
        scores = {"candidate": _sft_scores(by[target])}
        staged = registry.staged_version(run.tracking_uri, cfg.registered_model, STAGE)
        if not by[target].forgetting.passed:
            promoted, reason = False, f"{target} failed its forgetting gate ({by[target].forgetting.failures[0].score})"
        elif staged is None:
            promoted, reason = True, f"nothing staged yet: {cfg.registered_model} has no @{STAGE} version"
        elif str(staged.version) == str(version):
            promoted, reason = False, f"{target} v{version} is already @{STAGE}"
        else:
            scores["staged"] = {o: Score(value=float(staged.tags[o])) for o in FINETUNE_OBJECTIVES
                                if staged.tags.get(o) not in (None, "None")}
            dominated, reason = compare(scores["candidate"], scores["staged"])
            promoted, reason = not dominated, f"against v{staged.version}: {reason}"
        if promoted:
            reason += "; " + registry.promote(cfg.registered_model, version, run.tracking_uri, stage=STAGE)
        decision = PromotionDecision(policy=policy, candidate=target, version=version, scores=scores,
                                     staged_version=None if staged is None else str(staged.version),
                                     promoted=promoted, reason=reason)
    # the last step: it closes the parent run; on a rerun (the parent closed) it logs to a nested run instead
    target = runs.Run(run.tracking_uri, run.parent_run_id, run.experiment_id).open_or_nested("promotion")
    log_decision(target, decision)
    target.finish()
    return decision
