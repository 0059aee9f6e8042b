"""``merge_search_parallel``: merge_search with its evaluation fanned out over ``workers`` steps.

    python -m pipelines.merge_search_parallel --config zenml_config/remote/merge_search_parallel.yaml

On the Kubernetes stack each ``evaluate_shard_<i>`` step is a pod with its own GPU (the run config's
``ResourceSettings`` and pod settings); ``gather_shards`` fans in, and everything after it is merge_search's
own steps. On one machine, ``workers: N`` in the plain merge_search does the same with local processes.
"""

from __future__ import annotations

import sys

from zenml import pipeline

from medmerge.selection.search import SearchConfig
from pipelines._launch import build_time_tracking_uri
from steps.fanout_steps import SHARD_STEP, evaluate_shard, gather_shards
from steps.merge_search_steps import check_parents, log_search, register_selected, select_frontier, write_selected
from steps.promotion_steps import choose_picks, promote


@pipeline(enable_cache=True)
def merge_search_parallel(config: SearchConfig):
    """compatibility -> N evaluation shards -> gather -> frontier -> picks -> write -> log -> register -> promote."""
    shards, config = config.workers, config.model_copy(update={"workers": 1})   # the later steps' keys: not N's
    parents = check_parents(config)
    done = [evaluate_shard(config, parents, i, shards, id=SHARD_STEP.format(i)) for i in range(shards)]
    results = gather_shards(config, parents, shards, after=done)
    frontier = select_frontier(config, results)
    picks = choose_picks(config, results, frontier)
    checkpoints = write_selected(config, results, frontier, after=[picks])
    logged = log_search(config, results, build_time_tracking_uri(config.tracking_uri))
    versions = register_selected(config, logged, frontier, checkpoints)
    promote(config, logged, frontier, picks, versions)


def main(argv=None) -> int:
    from pipelines import merge_search
    from pipelines._launch import entry_point

    def arguments(ap):
        ap.add_argument("--config", required=True)

    def call(args):
        merge_search.merge_search = merge_search_parallel   # merge_search.run, with this pipeline
        return merge_search.run(args.config)

    return entry_point("merge_search_parallel", __doc__, argv, arguments, call)


if __name__ == "__main__":
    sys.exit(main())
