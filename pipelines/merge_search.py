"""``merge_search``: compatibility -> in-memory sweep + evaluation -> frontier -> write picks -> log -> register.

    python -m pipelines.merge_search --config zenml_config/merge_search_demo.yaml [--promote-knee] [--debug]

The run configuration is checked whole before ZenML loads (:mod:`medmerge.preflight`): each problem one
line, exit 2. A failed step is one line too; ``--debug`` (or ``MEDMERGE_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import os
import sys


def __getattr__(name: str):
    """``merge_search``, the ZenML pipeline (:mod:`pipelines.definitions`), imported on first use: the
    preflight runs before ZenML loads."""
    if name == "merge_search":
        from pipelines.definitions import merge_search

        return merge_search
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_config(config_path: str, promote_knee: bool = False):
    """The run configuration, through the preflight (``promote: knee`` when ``promote_knee``): every problem
    of it one line (PreflightError)."""
    from medmerge.preflight import check_run_configs

    return check_run_configs(search=config_path,
                             search_overrides={"promote": "knee"} if promote_knee else None)[0]


def run(config_path: str, promote_knee: bool = False) -> dict:
    """Run the pipeline from a ZenML run-config YAML; print the frontier, the picks, the promotion decision and
    where to look in MLflow. ``promote_knee`` (``--promote-knee``) sets the run config's ``promote: knee``."""
    from medmerge.tracking.registry import check_reachable

    config = load_config(config_path, promote_knee)   # the preflight, before ZenML is imported
    check_reachable(config.resolved_tracking_uri())
    temp = None
    if promote_knee and _raw_promote(config_path) != "knee":   # ZenML reads the file: a copy that says so
        temp = config_path = _with_policy(config_path, "knee")
    try:
        from pipelines._launch import launch

        pipeline_run = launch(sys.modules[__name__].merge_search, config_path)
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


def _raw_promote(config_path: str):
    from medmerge.preflight import read_run_config

    return read_run_config(config_path).get("promote", "none")


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
