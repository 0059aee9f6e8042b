"""Steps that spread work: ``merge_search_parallel``'s evaluation shards (each a pod with its GPU on the Kubernetes
stack) and the step that gathers them (ZenML's static fan-out / fan-in); finetune's SFT runs trained side by side
on local workers."""

from __future__ import annotations

from typing import Annotated

from zenml import get_step_context, step

import materializers  # noqa: F401  (registers the medmerge materializers)
from medmerge.finetune import FinetuneConfig, TrainingData
from medmerge.selection import search
from medmerge.selection.search import SearchConfig, SearchResults
from steps.failure import claim_registrations, fail_tracked_runs
from steps.finetune_steps import Initialisations

SHARD_STEP = "evaluate_shard_{}"
SHARD_OUTPUT = "shard_reports"


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def evaluate_shard(config: SearchConfig, parents: dict, shard: int,
                   shards: int) -> Annotated[SearchResults, "shard_reports"]:
    """In: config, parent hashes, the shard's index and count. Out: the reports of every ``shards``-th candidate
    from ``shard``, evaluated in memory on this step's device (no MLflow)."""
    return search.shard_results(config, parents, shard, shards)


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def gather_shards(config: SearchConfig, parents: dict, shards: int) -> Annotated[SearchResults, "evaluation_reports"]:
    """In: the shard steps' outputs (read from this run, ZenML's fan-in pattern). Out: every candidate's report in
    the sweep's order, each exactly once: what ``evaluate_candidates`` gives for the same config. Never cached:
    its inputs are the shard steps of this run, which ZenML does not hash."""
    run = get_step_context().pipeline_run
    parts = [run.steps[SHARD_STEP.format(i)].outputs[SHARD_OUTPUT][0].load() for i in range(shards)]
    return search.gather_results(config, parents, parts)


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def train_in_parallel(config: FinetuneConfig, data: TrainingData, subsets: dict[str, list[str]],
                      inits: Initialisations) -> Annotated[dict, "sft_trained"]:
    """In: the data, the few-shot subsets, the initialisations; the number of local workers in the step's
    ``extra``. Out: ``{<init>-<shots>: summary}`` of the SFT runs trained now, side by side (each with its
    memory check), each with its forgetting benchmarks cached; the ``sft`` steps after it find them finished.
    Never cached: it looks at what is on disk, and trains only what is missing."""
    from medmerge.finetune.parallel import train_all

    workers = get_step_context().step_run.config.extra.get("workers", 1)
    return train_all(config, data, subsets, inits.models, workers)
