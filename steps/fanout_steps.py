"""The fan-out steps of ``merge_search_parallel``: one evaluation step per shard (each a pod with its GPU on the
Kubernetes stack), gathered by one step (ZenML's static fan-out / fan-in)."""

from __future__ import annotations

from typing import Annotated

from zenml import get_step_context, step

import materializers  # noqa: F401  (registers the medmerge materializers)
from medmerge import parallel_search
from medmerge.search import SearchConfig, SearchResults
from steps.failure import claim_registrations, fail_tracked_runs

SHARD_STEP = "evaluate_shard_{}"
SHARD_OUTPUT = "shard_reports"


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def evaluate_shard(config: SearchConfig, parents: dict, shard: int,
                   shards: int) -> Annotated[SearchResults, "shard_reports"]:
    """In: config, parent hashes, the shard's index and count. Out: the reports of every ``shards``-th candidate
    from ``shard``, evaluated in memory on this step's device (no MLflow)."""
    return parallel_search.shard_results(config, parents, shard, shards)


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def gather_shards(config: SearchConfig, parents: dict, shards: int) -> Annotated[SearchResults, "evaluation_reports"]:
    """In: the shard steps' outputs (read from this run, ZenML's fan-in pattern). Out: every candidate's report in
    the sweep's order, each exactly once: what ``evaluate_candidates`` gives for the same config. Never cached:
    its inputs are the shard steps of this run, which ZenML does not hash."""
    run = get_step_context().pipeline_run
    parts = [run.steps[SHARD_STEP.format(i)].outputs[SHARD_OUTPUT][0].load() for i in range(shards)]
    return parallel_search.gather_results(config, parents, parts)
