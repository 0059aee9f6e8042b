"""Evaluate every candidate of a sweep in memory: parents read once, one resident model.

Each candidate's merged state dict is computed from the preloaded parents and copied into
one resident model; lm-eval evaluates that object. Nothing is written to disk. A candidate's
identity is its recipe with each parent replaced by the sha256 of its weights, so the cache
survives moved files and misses when any parent's weights change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

import torch
from tqdm.auto import tqdm

from medmerge.engine import (PreloadedParents, merged_state_dict, open_parents, parent_fingerprint,
                             parent_provenance, plan_merge)
from medmerge.evaluation.cache import EvalCache
from medmerge.evaluation.report import EvalReport
from medmerge.evaluation.runner import EvalSettings, ModelEvaluator, load_model, prepare_tasks
from medmerge.recipe import Candidate, Recipe, SweepSpec


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


def evaluate_sweep(spec: SweepSpec, settings: EvalSettings, cache: EvalCache | None = None, *,
                   allow_pickle: bool = False, quiet: bool = False) -> Iterator[tuple[Candidate, EvalReport]]:
    """Yield ``(candidate, report)`` for every candidate of ``spec``, evaluated in memory."""
    specs = prepare_tasks(settings)
    refs = [spec.clinical, spec.instruct] + ([spec.base] if spec.base else [])
    parents = open_parents(refs, allow_pickle=allow_pickle)
    candidates = spec.candidates()
    plans = [plan_merge(c.recipe, parents) for c in candidates]
    provenance = parent_provenance(parents)
    parent_hashes = {ref: parent_fingerprint({ref: p}) for ref, p in provenance.items()}

    model, tokenizer = load_model(spec.clinical, settings.device)
    evaluator = ModelEvaluator(model, tokenizer, settings, specs)
    preloaded: list[PreloadedParents] = []

    for cand, plan in tqdm(list(zip(candidates, plans)), desc="evaluating candidates", disable=quiet):
        identity = candidate_identity(cand.recipe, parent_hashes)

        def swap_in(plan=plan, cand=cand):
            if not preloaded:  # parents are read only once some candidate really needs evaluating
                preloaded.append(PreloadedParents(parents, plans))
            state = merged_state_dict(plan, preloaded[0])
            with torch.no_grad():
                missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or missing:
                raise RuntimeError(f"candidate {cand.name} does not fit the resident model: {missing or unexpected}")

        yield cand, evaluator.evaluate(cand.name, f"candidate:{identity}", identity=identity, cache=cache,
                                       prepare=swap_in)
