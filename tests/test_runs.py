"""medmerge.tracking.runs, the one owner of an MLflow run's life, on a real (sqlite) MLflow store."""

from __future__ import annotations

import pytest

from medmerge.tracking import runs


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
    tags = runs.get(uri, fresh.run_id).data.tags
    assert tags["medmerge.run_key"] == "key-1" and tags["medmerge.phase"] == "merge_search"


def test_nested_runs_resume_by_key_and_a_closed_parent_gets_a_nested_run(uri):
    parent, _ = runs.open_parent(uri, "runs", "key-2", "finetune", phase="finetune")
    a = parent.nested_by_key("clinical-8", "medmerge.identity", "abc", {"shots": 8})
    assert parent.nested_by_key("clinical-8", "medmerge.identity", "abc").run_id == a.run_id   # unfinished: resumed
    a.finish()
    b = parent.nested_by_key("clinical-8", "medmerge.identity", "abc")
    assert b.run_id != a.run_id                                    # finished: a new one
    assert runs.get(uri, a.run_id).data.tags["shots"] == "8"
    assert parent.open_or_nested("promotion") is parent            # open: itself
    parent.finish()
    later = parent.open_or_nested("promotion")
    assert later.run_id != parent.run_id and runs.get(uri, later.run_id).data.tags["mlflow.parentRunId"] == \
        parent.run_id
    later.param("decision", "x" * 7000)                            # cut to MLflow's 6000 characters
    assert runs.get(uri, later.run_id).data.params["decision"] == "x" * runs.PARAM_CHARS
    assert {r.info.run_id for r in parent.children()} == {a.run_id, b.run_id, later.run_id}


def test_failing_on_error_marks_the_run_failed(uri):
    run = runs.create(uri, "runs", "work")
    with pytest.raises(RuntimeError):
        with run.failing_on_error():
            run.metrics({"loss": 1.5, "steps": 3})
            raise RuntimeError("boom")
    got = runs.get(uri, run.run_id)
    assert got.info.status == "FAILED" and got.data.metrics == {"loss": 1.5, "steps": 3.0}
    assert runs.latest(uri, "runs", "attributes.run_name = 'work'").info.run_id == run.run_id
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
    data = runs.get(uri, run.run_id).data
    assert len([k for k in data.params if k.startswith("p")]) == 250 and data.params["p249"] == "249"
    assert len([k for k in data.metrics if k.startswith("m")]) == 2500 and data.metrics["m2499"] == 249.9
    assert data.tags["t149"] == "149" and data.metrics["loss"] == 1.5 and data.metrics["one"] == 1.0
    history = run.client.get_metric_history(run.run_id, "loss")
    assert [(h.step, h.value) for h in history] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert {h.step for h in run.client.get_metric_history(run.run_id, "m7")} == {3}
