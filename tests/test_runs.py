"""medmerge.tracking.runs, the one owner of an MLflow run's life, on a real (sqlite) MLflow store."""

from __future__ import annotations

import pytest

from medmerge.tracking import failure, runs


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("runs", artifact_location=str(tmp / "artifacts"))
    return uri


def test_a_parent_is_resumed_by_key_until_it_finishes(uri):
    first, resumed = runs.open_parent(uri, "runs", "key-1", "search", phase="merge_search")
    assert not resumed and first.is_open()
    first.fail()                                                    # killed, say: the rerun resumes it
    again, resumed = runs.open_parent(uri, "runs", "key-1", "search", phase="merge_search")
    assert resumed and again.run_id == first.run_id and again.status() == "RUNNING"
    again.finish()
    fresh, resumed = runs.open_parent(uri, "runs", "key-1", "search", phase="merge_search")
    assert not resumed and fresh.run_id != first.run_id            # a finished parent is never reopened
    tags = runs.get(uri, fresh.run_id).tags
    assert tags["medmerge.run_key"] == "key-1" and tags["medmerge.phase"] == "merge_search"


def test_nested_runs_resume_by_key_and_a_closed_parent_gets_a_nested_run(uri):
    parent, _ = runs.open_parent(uri, "runs", "key-2", "finetune", phase="finetune")
    a = parent.nested_by_key("clinical-8", "medmerge.identity", "abc", {"shots": 8})
    assert parent.nested_by_key("clinical-8", "medmerge.identity", "abc").run_id == a.run_id   # unfinished: resumed
    a.finish()
    b = parent.nested_by_key("clinical-8", "medmerge.identity", "abc")
    assert b.run_id != a.run_id                                    # finished: a new one
    assert runs.get(uri, a.run_id).tags["shots"] == "8"
    assert parent.open_or_nested("promotion") is parent            # open: itself
    parent.finish()
    later = parent.open_or_nested("promotion")
    assert later.run_id != parent.run_id and runs.get(uri, later.run_id).parent_run_id == parent.run_id
    later.param("decision", "x" * 7000)                            # cut to MLflow's 6000 characters
    assert runs.get(uri, later.run_id).params["decision"] == "x" * runs.PARAM_CHARS
    assert {r.run_id for r in parent.children()} == {a.run_id, b.run_id, later.run_id}


def test_failing_on_error_marks_the_run_failed(uri):
    run = runs.create(uri, "runs", "work")
    with pytest.raises(RuntimeError, match="boom"), run.failing_on_error():
        run.metrics({"loss": 1.5, "steps": 3})
        raise RuntimeError("boom")
    got = runs.get(uri, run.run_id)
    assert isinstance(got, runs.RunRecord)                          # a record, never MLflow's Run entity
    assert got.status == "FAILED" and got.metrics == {"loss": 1.5, "steps": 3.0}
    assert runs.latest(uri, "runs", "attributes.run_name = 'work'").run_id == run.run_id
    assert runs.latest(uri, "no-such-experiment", "") is None


def test_values_are_logged_in_batches_within_mlflows_limits(uri, monkeypatch):
    run = runs.create(uri, "runs", "batched")
    requests = []
    real = run.client.log_batch

    def counting(run_id, metrics=(), params=(), tags=()):
        requests.append((len(metrics), len(params), len(tags)))
        return real(run_id, metrics=metrics, params=params, tags=tags)

    monkeypatch.setattr(run.client, "log_batch", counting)
    run.params({f"p{i}": i for i in range(250)})
    run.metrics({f"m{i}": i / 10 for i in range(2500)}, step=3)
    run.tags({f"t{i}": i for i in range(150)})
    run.series("loss", [3.0, 2.0, 1.5])
    run.metric("one", 1.0)
    assert len(requests) == 3 + 3 + 2 + 1 + 1                      # not 2903 round trips
    assert all(m <= 1000 and p <= 100 and t <= 100 for m, p, t in requests)
    data = runs.get(uri, run.run_id)
    assert len([k for k in data.params if k.startswith("p")]) == 250 and data.params["p249"] == "249"
    assert len([k for k in data.metrics if k.startswith("m")]) == 2500 and data.metrics["m2499"] == 249.9
    assert data.tags["t149"] == "149" and data.metrics["loss"] == 1.5 and data.metrics["one"] == 1.0
    history = run.client.get_metric_history(run.run_id, "loss")
    assert [(h.step, h.value) for h in history] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert {h.step for h in run.client.get_metric_history(run.run_id, "m7")} == {3}


def _version(uri: str, name: str, run: runs.Run) -> str:
    """A version of ``name`` registered from ``run`` (as register_checkpoint records it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    c = MlflowClient(uri, registry_uri=uri)
    try:
        c.create_registered_model(name)
    except MlflowException:
        pass   # exists
    mv = c.create_model_version(name, source=f"runs:/{run.run_id}/model", run_id=run.run_id)
    runs.record_version(uri, name, mv.version, run.run_id)
    return mv.version


def test_a_failed_run_ends_failed_and_registers_nothing(uri):
    from mlflow import MlflowClient

    from medmerge.tracking import registry

    c = MlflowClient(uri, registry_uri=uri)
    earlier, _ = runs.open_parent(uri, "runs", "key-earlier", "earlier", phase="merge_search")
    kept = earlier.nested("linear-0.3")
    kept.finish()
    earlier.finish()
    runs.forget_touched()                                          # a new pipeline run starts here
    parent, _ = runs.open_parent(uri, "runs", "key-3", "search", phase="merge_search")
    done = parent.nested("linear-0.5")                             # its own work finished
    done.finish()
    busy = parent.nested("linear-0.7")                             # still logging when the step failed
    other_pod = c.create_run(parent.experiment_id, run_name="sft",  # opened by a process that is gone
                             tags={"mlflow.parentRunId": parent.run_id}).info.run_id
    fresh = _version(uri, "failing", done)                         # registered by this run
    reused = _version(uri, "failing", kept)                        # an earlier, finished run's version
    staged = _version(uri, "failing", done)
    registry.promote("failing", staged, uri)                       # at @staging: never deleted

    report = failure.fail_touched("step register_selected failed: disk full")

    status = {r: runs.get(uri, r).status for r in (parent.run_id, done.run_id, busy.run_id, other_pod)}
    assert status == {parent.run_id: "FAILED", done.run_id: "FINISHED", busy.run_id: "FAILED", other_pod: "FAILED"}
    assert runs.get(uri, parent.run_id).tags["medmerge.failure"] == "step register_selected failed: disk full"
    assert runs.get(uri, earlier.run_id).status == "FINISHED"   # not this run's: untouched
    assert sorted(v.version for v in c.search_model_versions("name='failing'")) == sorted([reused, staged])
    assert report.deleted_versions == [f"failing v{fresh}"] and report.problems == []
    assert sorted(report.failed) == sorted([parent.run_id, busy.run_id, other_pod])
    # the rerun resumes the failed parent (and a later step's open_or_nested writes into it again)
    again, resumed = runs.open_parent(uri, "runs", "key-3", "search", phase="merge_search")
    assert resumed and again.run_id == parent.run_id and again.status() == "RUNNING"
    again.fail()
    assert again.open_or_nested("promotion") is again and again.status() == "RUNNING"


def test_a_failed_run_deletes_the_registered_model_it_created_and_never_raises(uri):
    from mlflow import MlflowClient

    runs.forget_touched()
    parent, _ = runs.open_parent(uri, "runs", "key-4", "finetune", phase="finetune")
    nested = parent.nested("clinical-8")
    nested.finish()
    _version(uri, "only-this-run", nested)
    runs.Run(uri, "0" * 32, parent.experiment_id)                  # a run the store does not have
    with pytest.raises(RuntimeError, match="boom"), parent.failing_on_error():
        raise RuntimeError("boom")                                 # the step's own handling came first

    report = failure.fail_touched("step summarise failed: boom")

    assert report.deleted_versions == ["only-this-run v1"] and report.failed == []
    assert [p for p in report.problems if p.startswith(f"run {'0' * 32}:")], report.problems
    assert MlflowClient(uri, registry_uri=uri).search_registered_models("name='only-this-run'") == []
    second = failure.fail_touched("again")                             # twice (the step's hook, then the launcher)
    assert second.failed == [] and second.deleted_versions == []


def test_the_registry_hands_out_version_records(uri):
    """A registered version is read as a ``registry.Version`` record (never MLflow's ``ModelVersion``)."""
    from medmerge.tracking import registry

    run = runs.create(uri, "runs", "registered")
    run.finish()
    v = str(_version(uri, "records", run))
    registry.promote("records", v, uri)
    staged = registry.staged_version(uri, "records")
    assert isinstance(staged, registry.Version)
    assert (staged.name, staged.version, staged.run_id, staged.stage, staged.aliases) == \
        ("records", v, run.run_id, "Staging", ("staging",))
    assert staged.tags["promotion_reason"].startswith(f"records v{v}")
    assert registry.model_version(uri, f"models:/records/{v}") == staged == registry.newest_version(uri, "records")
    assert registry.staged_version(uri, "no-such-model") is None
