"""A failed pipeline run leaves no MLflow run RUNNING and registers nothing, and its rerun picks up cleanly
(merge_search on tiny models, a real sqlite MLflow store)."""

from __future__ import annotations

import pytest
import yaml
from factory import make_family

pytestmark = pytest.mark.slow


def test_a_failed_merge_search_registers_nothing_and_its_rerun_completes(tmp_path, capsys):
    from mlflow import MlflowClient
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from medmerge.tracking import registry, runs
    from pipelines.merge_search import main, run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri, registry_uri=uri)
    exp = c.create_experiment("failing-search", artifact_location=str(tmp_path / "artifacts"))
    # @staging holds a version whose scores cannot be read (registered by hand, from a run that logged none)
    hand = runs.create(uri, "failing-search", "registered by hand")
    hand.finish()
    c.create_registered_model("failing-model")
    c.create_model_version("failing-model", source=f"runs:/{hand.run_id}/model", run_id=hand.run_id)
    registry.promote("failing-model", "1", uri)

    models = make_family(tmp_path / "models", n_children=2)
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(models["m0"]), "instruct": str(models["m1"]),
                                     "methods": ["linear"], "ratios": [0.0, 0.5, 1.0]}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"parameters": {"config": {
        "sweep": str(sweep), "suites": ["clinical"], "objectives": ["mm_pubmedqa", "medical_avg"], "limit": 2,
        "data_dir": "sample", "output_dir": str(tmp_path / "selected"), "registered_model": "failing-model",
        "experiment": "failing-search", "tracking_uri": uri, "picks": "best_per_method", "promote": "knee"}}}))

    # 1. the promote step cannot read the staged version's scores: one line, exit 2
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "step promote failed: cannot read the scores of failing-model v1 (@staging)" in err, err
    searched = runs.search(uri, [exp], "tags.`medmerge.phase` = 'merge_search'")
    assert len(searched) == 1
    parent = searched[0]
    assert parent.status == "FAILED"
    assert parent.tags["medmerge.failure"].startswith("step promote failed: cannot read the scores")
    assert [r.name for r in runs.search(uri, [exp], "attributes.status = 'RUNNING'")] == []
    # the versions register_selected made were deleted: the failed run registered nothing; @staging untouched
    assert [str(v.version) for v in c.search_model_versions("name='failing-model'")] == ["1"]
    assert {a: str(v) for a, v in c.get_registered_model("failing-model").aliases.items()} == {"staging": "1"}

    # 2. the staged version is retired by hand; the rerun registers again and resumes the failed parent run
    c.delete_registered_model_alias("failing-model", "staging")
    out = run(str(config))
    decision = out["promotion"]
    assert decision.promoted and "nothing staged yet" in decision.reason
    assert decision.version in out["versions"].values()
    assert {str(v.version) for v in c.search_model_versions("name='failing-model'")} == \
        {"1", *out["versions"].values()}
    assert str(c.get_model_version_by_alias("failing-model", "staging").version) == decision.version
    assert out["results"].parent_run_id == parent.run_id          # the same parent, resumed
    assert runs.get(uri, parent.run_id).status == "FINISHED"
    # the failed run's cached registration was expired: register_selected ran again, it was not replayed
    steps = Client().get_pipeline("merge_search").last_run.steps
    assert steps["register_selected"].status == ExecutionStatus.COMPLETED
    assert steps["evaluate_candidates"].status == ExecutionStatus.CACHED
