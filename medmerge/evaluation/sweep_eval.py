"""Evaluate every candidate of a sweep in memory: parents read once, one resident model.

Each candidate's merged state dict is computed from the preloaded parents and copied into
one resident model; lm-eval evaluates that object. Nothing is written to disk. A candidate's
identity is its recipe with each parent replaced by the sha256 of its weights, so the cache
survives moved files and misses when any parent's weights change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from medmerge.evaluation.cache import EvalCache
from medmerge.evaluation.report import EvalReport
from medmerge.evaluation.runner import EvalSettings, ModelEvaluator, load_model, prepare_tasks
from medmerge.io import provenance as identity
from medmerge.merge.engine import PreloadedParents, merged_state_dict, open_parents, plan_merge
from medmerge.merge.recipe import Recipe, SweepCandidate, SweepSpec


def candidate_identity(recipe: Recipe, parent_hashes: dict[str, str]) -> str:
    data = recipe.to_mergekit_dict()
    swap = lambda ref: f"sha256:{parent_hashes[ref]}"  # noqa: E731
    if "base_model" in data:
        data["base_model"] = swap(data["base_model"])
    for m in data["models"]:
        m["model"] = swap(m["model"])
    if recipe.random_seed is not None:
        data["random_seed"] = recipe.random_seed
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


class SweepEvaluator:
    """One resident model evaluating candidates of ``spec`` one at a time, in memory.

    The parents are opened (and checked) once; their tensors are read into memory once, when the
    first candidate that is not fully cached is evaluated, for every plan of ``plans`` (the
    tensors a candidate reads do not depend on its parameter values, so a search that proposes
    candidates as it goes passes one representative plan per method)."""

    def __init__(self, spec: SweepSpec, settings: EvalSettings, cache: EvalCache | None = None, *,
                 allow_pickle: bool = False, representatives: list[SweepCandidate] | None = None):
        specs = prepare_tasks(settings)
        self.parents = open_parents(spec.parent_refs, allow_pickle=allow_pickle)
        parents = identity.weights(identity.parent_provenance(self.parents))
        self.parent_hashes = {ref: identity.fingerprint({ref: w}) for ref, w in parents.items()}
        self.cache = cache
        self.representatives = [plan_merge(c.recipe, self.parents) for c in representatives or []]
        self.model, tokenizer = load_model(spec.clinical, settings.device, dtype=settings.dtype)
        self.evaluator = ModelEvaluator(self.model, tokenizer, settings, specs)
        self._preloaded: PreloadedParents | None = None

    def plan(self, cand: SweepCandidate):
        return plan_merge(cand.recipe, self.parents)

    def identity(self, cand: SweepCandidate) -> str:
        return candidate_identity(cand.recipe, self.parent_hashes)

    def swap_in(self, cand: SweepCandidate, plan=None, all_plans=None) -> None:
        """Merge ``cand`` from the preloaded parents into the resident model (parents read on the first call)."""
        plan = plan or self.plan(cand)
        if self._preloaded is None:  # parents are read only once some candidate really needs evaluating
            self._preloaded = PreloadedParents(self.parents, all_plans or self.representatives or [plan])
        state = merged_state_dict(plan, self._preloaded)
        with torch.no_grad():
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise RuntimeError(f"candidate {cand.name} does not fit the resident model: {missing or unexpected}")
        self.evaluator._evaluating = cand.name

    def evaluate(self, cand: SweepCandidate, plan=None, all_plans=None) -> EvalReport:
        plan = plan or self.plan(cand)
        identity = self.identity(cand)
        return self.evaluator.evaluate(cand.name, f"candidate:{identity}", identity=identity, cache=self.cache,
                                       prepare=lambda: self.swap_in(cand, plan, all_plans))


def evaluate_sweep(spec: SweepSpec, settings: EvalSettings, cache: EvalCache | None = None, *,
                   allow_pickle: bool = False, quiet: bool = False) -> Iterator[tuple[SweepCandidate, EvalReport]]:
    """Yield ``(candidate, report)`` for every candidate of ``spec`` (and the parents, for a methods
    grid that does not hold them), evaluated in memory."""
    candidates = spec.evaluated_candidates()
    ev = SweepEvaluator(spec, settings, cache, allow_pickle=allow_pickle)
    plans = [ev.plan(c) for c in candidates]
    for cand, plan in tqdm(list(zip(candidates, plans)), desc="evaluating candidates", disable=quiet):
        yield cand, ev.evaluate(cand, plan, plans)
