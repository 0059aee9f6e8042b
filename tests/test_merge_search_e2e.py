"""merge_search end to end: a real MLflow server on a free loopback port, the ZenML pipeline on the
demo models, then the server's REST API is asked what a user would look for."""

from __future__ import annotations


import pytest
import torch
import yaml

from factory import read
from mlflow_api import api, api_post

pytestmark = pytest.mark.slow


def test_merge_search_pipeline(demo_models, tmp_path, capsys):
    import mlflow
    from zenml.enums import ExecutionStatus

    from medmerge.cli import main
    from medmerge.tracking.server import start, stop
    from pipelines.merge_search import run

    state = tmp_path / "mlflow"
    server = start(state, port=0)
    try:
        sweep = tmp_path / "sweep.yml"
        sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]), "instruct": str(demo_models["instruct"]),
                                         "methods": ["linear", "slerp"], "ratios": [0.0, 0.5, 1.0]}))
        cfg = tmp_path / "run.yaml"
        cfg.write_text(yaml.safe_dump({"parameters": {"config": {
            "sweep": str(sweep), "suites": ["clinical", "ifeval"], "data_dir": "sample", "limit": 4,
            "max_gen_toks": 32, "eps": 0.0, "output_dir": str(tmp_path / "selected"),
            "registered_model": "e2e-model", "experiment": "e2e", "tracking_uri": server.uri}}}))
        out = run(str(cfg))
        frontier, versions, results = out["frontier"], out["versions"], out["results"]
        assert set(versions) == set(frontier.near) and frontier.knee in versions

        # runs: one parent, one nested run per candidate, with every score as a metric
        exp = api(server.uri, "experiments/get-by-name", experiment_name="e2e")["experiment"]
        runs = api_post(server.uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
        parents = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
        nested = [r for r in runs if r not in parents]
        assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
        assert sorted(r["info"]["run_name"] for r in nested) == sorted(
            f"{m}-{x}" for m in ("linear", "slerp") for x in ("0.0", "0.5", "1.0"))
        for r in nested:
            metrics = {m["key"] for m in r["data"]["metrics"]}
            assert {"medical_avg", "if_score", "mm_pubmedqa.acc", "mm_ifeval.prompt_level_strict_acc"} <= metrics
        # figures and the frontier table are artifacts of the parent run
        pid = parents[0]["info"]["run_id"]
        figs = api(server.uri, "artifacts/list", run_id=pid, path="figures")["files"]
        assert {f["path"] for f in figs} == {"figures/frontier.png", "figures/trajectories.png"}
        assert all(f["file_size"] > 10_000 for f in figs)

        # registered versions carry their tags
        mvs = api(server.uri, "model-versions/search", filter="name='e2e-model'")["model_versions"]
        assert len(mvs) == len(versions)
        for mv in mvs:
            tags = {t["key"]: t["value"] for t in mv["tags"]}
            assert {"merge_method", "parents_sha256", "medical_avg", "if_score", "run_id", "candidate"} <= set(tags)
            assert versions[tags["candidate"]] == mv["version"]

        # promotion: models:/NAME@staging loads the knee, weights equal to the merged candidate
        knee_version = versions[frontier.knee]
        assert main(["promote", "e2e-model", knee_version, "--tracking-uri", server.uri]) == 0
        mlflow.set_tracking_uri(server.uri)
        local = mlflow.artifacts.download_artifacts("models:/e2e-model@staging", dst_path=str(tmp_path / "dl"))
        got, want = read(local), read(tmp_path / "selected" / frontier.knee)
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
        mv = api(server.uri, "model-versions/get", name="e2e-model", version=knee_version)["model_version"]
        assert mv["current_stage"] == "Staging"

        # nothing changed: ZenML's cache is reused and no version is registered twice
        from pipelines.merge_search import merge_search

        again = merge_search.with_options(config_path=str(cfg))()
        # check_parents always runs (it hashes the parents' weights); everything after it is cached on that hash
        assert again.steps["check_parents"].status == ExecutionStatus.COMPLETED
        assert all(s.status == ExecutionStatus.CACHED for n, s in again.steps.items() if n != "check_parents")
        assert len(api(server.uri, "model-versions/search", filter="name='e2e-model'")["model_versions"]) == len(versions)
    finally:
        stop(state)
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
