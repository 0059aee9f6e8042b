"""``merge_search``: compatibility -> in-memory sweep + evaluation -> frontier -> write picks -> log -> register.

    python -m pipelines.merge_search --config zenml_config/merge_search_demo.yaml [--promote-knee]
"""

from __future__ import annotations

import os
import sys

from zenml import pipeline

from medmerge.search import SearchConfig
from pipelines._launch import build_time_tracking_uri
from steps.promotion_steps import choose_picks, promote
from steps.merge_search_steps import (check_parents, evaluate_candidates, log_search, register_selected,
                                      select_frontier, write_selected)


@pipeline(enable_cache=True)
def merge_search(config: SearchConfig):
    parents = check_parents(config)
    results = evaluate_candidates(config, parents)
    frontier = select_frontier(config, results)
    picks = choose_picks(config, results, frontier)   # a bad pick fails here: nothing written or registered
    checkpoints = write_selected(config, results, frontier, after=[picks])
    # only these two touch MLflow; the server is their parameter, so another server re-runs just them
    logged = log_search(config, results, build_time_tracking_uri(config.tracking_uri))
    versions = register_selected(config, logged, frontier, checkpoints)
    promote(config, logged, frontier, picks, versions)


def run(config_path: str, promote_knee: bool = False) -> dict:
    """Run the pipeline from a ZenML run-config YAML; print the frontier, the picks, the promotion decision and
    where to look in MLflow. ``promote_knee`` (``--promote-knee``) sets the run config's ``promote: knee``."""
    from medmerge.tracking.registry import check_reachable
    from pipelines._launch import read_run_config

    raw = read_run_config(config_path)
    temp = None
    if promote_knee and raw.get("promote", "none") != "knee":
        temp = config_path = _with_policy(config_path, "knee")
        raw = read_run_config(config_path)
    try:
        config = SearchConfig.model_validate(raw)  # errors name the bad field first
        check_reachable(config.resolved_tracking_uri())
        from pipelines._launch import launch

        pipeline_run = launch(merge_search, config_path)
    finally:
        if temp is not None:
            os.unlink(temp)
    frontier = pipeline_run.steps["select_frontier"].output.load()
    versions = pipeline_run.steps["register_selected"].output.load()
    results = pipeline_run.steps["log_search"].output.load()
    decision = pipeline_run.steps["promote"].output.load()
    uri = results.tracking_uri
    name = config.registered_model
    print("\n" + frontier.table)
    print(f"\nMLflow run:        {uri}/#/experiments/{results.experiment_id}/runs/{results.parent_run_id}")
    print(f"registered model:  {uri}/#/models/{name}  versions {versions}")
    print("picks:             " + ", ".join(f"models:/{name}@{a} -> {p['candidate']} (v{p['version']})"
                                             for a, p in decision.picks.items()))
    print(decision.summary())
    if decision.promoted:
        print(f"models:/{name}@staging -> version {decision.version}")
    return {"frontier": frontier, "versions": versions, "results": results, "promotion": decision}


def _with_policy(config_path: str, policy: str) -> str:
    """A copy of the run-config YAML with ``parameters.config.promote`` set (beside the temp files)."""
    import tempfile

    import yaml

    with open(config_path) as f:
        doc = yaml.safe_load(f)
    doc["parameters"]["config"]["promote"] = policy
    fd, path = tempfile.mkstemp(prefix="merge_search-", suffix=".yaml")
    with open(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def main(argv=None) -> int:
    from pipelines._launch import entry_point

    def arguments(ap):
        ap.add_argument("--config", required=True)
        ap.add_argument("--promote-knee", action="store_true")

    return entry_point("merge_search", __doc__, argv, arguments, lambda args: run(args.config, args.promote_knee))


if __name__ == "__main__":
    sys.exit(main())
