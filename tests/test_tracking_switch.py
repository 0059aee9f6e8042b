"""finetune pointed at another tracking server (MLFLOW_TRACKING_URI, no tracking_uri in the config): the
new server gets the parent run, the nested run and the version; the old one gets nothing; the SFT is not
trained again (its checkpoint is reused) and the pre-SFT evaluation comes from ZenML's cache.
(merge_search's switch is tested against PostgreSQL in test_postgres.py.)"""

from __future__ import annotations

import pytest
import yaml
from mlflow_api import api, api_post

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _runs(uri: str, experiment: str) -> list[dict]:
    exp = api(uri, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    return api_post(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])


@pytest.mark.timeout(1800)  # two pipeline runs with SFT, generation and evaluation
def test_finetune_logs_to_the_server_it_is_pointed_at(demo_models, mlflow_server, tmp_path, monkeypatch, capsys):
    from zenml.enums import ExecutionStatus as S

    from medmerge.tracking.server import start, stop
    from pipelines.finetune import run

    old, new = mlflow_server, start(tmp_path / "new-server", port=0)   # the session's server, and another
    out = tmp_path / "out"
    model, experiment = "switch-sft", "switch-finetune"
    cfg = tmp_path / "finetune.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": dict(
        initialisations=[{"name": "clinical", "path": str(demo_models["clinical"])}],
        task="mts_dialog", data_dir="sample", eval_limit=4, shots=[8],
        sft={"epochs": 1, "learning_rate": 1e-3, "per_device_batch": 8, "grad_accum": 1, "max_length": 512,
             "min_steps_few_shot": 2, "gradient_checkpointing": False},
        generation={"max_new_tokens": 8},
        forgetting={"suites": ["ifeval"], "data_dir": "sample", "limit": 2, "max_gen_toks": 8},
        output_dir=str(out), registered_model=model, experiment=experiment)}}))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", old.uri)
        first = run(str(cfg))
        assert first["tracking"].tracking_uri == old.uri
        old_runs = {r["info"]["run_id"] for r in _runs(old.uri, experiment)}
        old_versions = api(old.uri, "model-versions/search", filter=f"name='{model}'")["model_versions"]
        assert len(old_runs) == 2 and len(old_versions) == 1
        weights = {p: p.stat().st_mtime_ns for p in (out / "sft" / "clinical-8").glob("*.safetensors")}
        assert weights
        capsys.readouterr()

        monkeypatch.setenv("MLFLOW_TRACKING_URI", new.uri)
        second = run(str(cfg))
        printed = capsys.readouterr().out
        steps = {n: s.status for n, s in second["run"].steps.items()}
        assert steps["baseline_clinical"] == steps["subsample"] == S.CACHED, steps
        # the steps that log to MLflow ran again, on the new server ...
        assert all(steps[n] == S.COMPLETED for n in ("validate_data", "sft_clinical_8", "evaluate_clinical_8",
                                                     "summarise")), steps
        # ... without training again: the recorded checkpoint of the same SFT was reused
        assert {p: p.stat().st_mtime_ns for p in weights} == weights
        assert second["tracking"].tracking_uri == new.uri

        runs = _runs(new.uri, experiment)
        nested = [r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"]["tags"])]
        assert len(runs) == 2 and [r["info"]["run_name"] for r in nested] == ["clinical-8"]
        assert all(r["info"]["status"] == "FINISHED" for r in runs)
        losses = {m["key"] for m in nested[0]["data"]["metrics"]}
        assert {"train_loss", "composite"} <= losses  # the reused SFT's loss is logged on the new server too
        new_versions = api(new.uri, "model-versions/search", filter=f"name='{model}'")["model_versions"]
        assert [v["version"] for v in new_versions] == list(second["summary"].versions.values()) == ["1"]

        # the old server got nothing from the second run; the links printed name the new one
        assert {r["info"]["run_id"] for r in _runs(old.uri, experiment)} == old_runs
        assert api(old.uri, "model-versions/search", filter=f"name='{model}'")["model_versions"] == old_versions
        assert f"MLflow run:        {new.uri}/#/experiments/" in printed and old.uri not in printed
    finally:
        stop(tmp_path / "new-server")
