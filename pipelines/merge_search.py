"""``merge_search``: compatibility -> in-memory sweep + evaluation -> frontier -> write picks -> register.

    python -m pipelines.merge_search --config zenml_config/merge_search_demo.yaml [--promote-knee]
"""

from __future__ import annotations

import sys

from zenml import pipeline

from medmerge.search import SearchConfig
from steps.merge_search_steps import (check_parents, evaluate_candidates, register_selected, select_frontier,
                                      write_selected)


@pipeline(enable_cache=True)
def merge_search(config: SearchConfig):
    parents = check_parents(config)
    results = evaluate_candidates(config, parents)
    frontier = select_frontier(config, results)
    checkpoints = write_selected(config, results, frontier)
    register_selected(config, results, frontier, checkpoints)


def run(config_path: str, promote_knee: bool = False) -> dict:
    """Run the pipeline from a ZenML run-config YAML; print the frontier and where to look in MLflow."""
    from medmerge.tracking.registry import check_reachable, promote
    from pipelines._launch import read_run_config

    config = SearchConfig.model_validate(read_run_config(config_path))  # errors name the bad field first
    check_reachable(config.resolved_tracking_uri())
    from pipelines._launch import launch

    pipeline_run = launch(merge_search, config_path)
    frontier = pipeline_run.steps["select_frontier"].output.load()
    versions = pipeline_run.steps["register_selected"].output.load()
    results = pipeline_run.steps["evaluate_candidates"].output.load()
    uri = results.tracking_uri
    print("\n" + frontier.table)
    print(f"\nMLflow run:        {uri}/#/experiments/{results.experiment_id}/runs/{results.parent_run_id}")
    print(f"registered model:  {uri}/#/models/{config.registered_model}  versions {versions}")
    out = {"frontier": frontier, "versions": versions, "results": results}
    if promote_knee:
        version = versions[frontier.knee]
        print(f"promoting the knee {frontier.knee} (version {version}) to staging: "
              f"{promote(config.registered_model, version, uri)}")
        print(f"models:/{config.registered_model}@staging -> version {version}")
    return out


def main(argv=None) -> int:
    from pipelines._launch import entry_point

    def arguments(ap):
        ap.add_argument("--config", required=True)
        ap.add_argument("--promote-knee", action="store_true")

    return entry_point("merge_search", __doc__, argv, arguments, lambda args: run(args.config, args.promote_knee))


if __name__ == "__main__":
    sys.exit(main())
