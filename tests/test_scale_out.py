"""A merge search on 2 local workers (``workers: 2``) on the demo models: the same record as one worker, each
candidate and trial evaluated once, and a worker SIGKILLed mid-candidate is survived (integration tier:
each test evaluates the demo sweep again, on 2 cores minutes)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import pytest
import yaml
from factory import DEMO_EVAL, DEMO_SWEEP
from mlflow_api import api, api_post

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _sweep(tmp_path, demo_models, **extra) -> dict:
    return {"clinical": str(demo_models["clinical"]), "instruct": str(demo_models["instruct"]), **extra}


def _result_files(cache) -> int:
    return sum(1 for p in (cache / "eval").rglob("*.json"))


def test_two_workers_give_the_one_worker_record(demo_search, demo_models, mlflow_server, medmerge_cache, tmp_path):
    """The demo search again with workers: 2 (a fresh evaluation cache: every candidate really evaluated):
    the same scores, frontier, picks and registered versions as the session's one-worker run; one parent run
    with one nested run per candidate; each (candidate, task) evaluated once. Run again with workers: 1,
    ZenML serves the evaluation from its cache: its key does not depend on the number of workers."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from pipelines.merge_search import run

    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump(_sweep(tmp_path, demo_models, **DEMO_SWEEP)))
    cfg = tmp_path / "run.yaml"
    config = {"sweep": str(sweep), **DEMO_EVAL, "output_dir": str(tmp_path / "selected"),
              "registered_model": "scale-out", "experiment": "scale-out", "tracking_uri": mlflow_server.uri,
              "picks": "best_per_method", "promote": "knee", "workers": 2}
    cfg.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    out = run(str(cfg))
    first = Client().get_pipeline("merge_search").last_run
    assert first.steps["evaluate_candidates"].config.extra == {"workers": 2}   # handed to the step, apart
    assert first.steps["select_frontier"].config.parameters["config"]["workers"] == 1   # from what it hashes

    one = demo_search["out"]
    scores = lambda res: {c.name: (c.report.medical_avg, c.report.if_score) for c in res.candidates}
    assert scores(out["results"]) == scores(one["results"])
    assert (out["frontier"].frontier, out["frontier"].near, out["frontier"].knee) == \
        (one["frontier"].frontier, one["frontier"].near, one["frontier"].knee)
    assert out["versions"] == one["versions"]
    assert {a: p["candidate"] for a, p in out["promotion"].picks.items()} == \
        {a: p["candidate"] for a, p in one["promotion"].picks.items()}
    assert out["promotion"].promoted == one["promotion"].promoted

    # each candidate evaluated once: nothing came from a cache, and the cache holds one result per (candidate, task)
    cands = out["results"].candidates
    assert all(c.report.cached_tasks == [] for c in cands)
    assert _result_files(medmerge_cache) == sum(len(c.report.tasks) for c in cands)

    # the MLflow record, over REST: one parent run, one nested run per candidate
    exp = api(mlflow_server.uri, "experiments/get-by-name", experiment_name="scale-out")["experiment"]
    runs = api_post(mlflow_server.uri, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                       "max_results": 200})["runs"]
    tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
    parents = [r for r in runs if "mlflow.parentRunId" not in tags(r)]
    nested = [r for r in runs if tags(r).get("mlflow.parentRunId") == out["results"].parent_run_id
              and "candidate" in tags(r)]
    assert [r["info"]["run_id"] for r in parents] == [out["results"].parent_run_id]
    assert sorted(tags(r)["candidate"] for r in nested) == sorted(c.name for c in cands)
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    metrics = {tags(r)["candidate"]: {m["key"]: m["value"] for m in r["data"]["metrics"]} for r in nested}
    for c in cands:
        assert metrics[c.name]["medical_avg"] == pytest.approx(c.report.medical_avg)

    # the same run with workers: 1: every cached step is served from ZenML's cache, the evaluation included
    config["workers"] = 1
    cfg.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    again = run(str(cfg))
    assert again["versions"] == out["versions"]
    last = Client().get_pipeline("merge_search").last_run
    assert last.steps["evaluate_candidates"].status == ExecutionStatus.CACHED
    assert last.steps["log_search"].status == ExecutionStatus.CACHED


def test_worker_killed_mid_candidate_is_rerun_and_counted_once(demo_search, demo_models, tmp_path):
    """The second candidate's worker is SIGKILLed once it started: a fresh pool re-runs it, the search finishes
    with the one-worker scores, and every candidate is in the results once."""
    from medmerge.selection.search import SearchConfig, check_parents, evaluate

    cfg = SearchConfig(sweep=_sweep(tmp_path, demo_models, **DEMO_SWEEP), **DEMO_EVAL,
                       output_dir=str(tmp_path / "out"))
    victim = cfg.sweep.evaluated_candidates()[1].name
    events, killed = [], []

    def on_event(kind, pid, key):
        events.append((kind, pid, key))
        if kind == "start" and key == victim and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    res = evaluate(cfg, check_parents(cfg), workers=2, on_event=on_event)
    assert killed and ("broken", None, None) in events
    names = [c.name for c in res.candidates]
    assert names == [c.name for c in demo_search["out"]["results"].candidates]   # once each, in sweep order
    done = [k for kind, _, k in events if kind == "done"]
    assert sorted(done) == sorted(names)
    starts = [(pid, k) for kind, pid, k in events if kind == "start" and k == victim]
    assert len(starts) == 2 and starts[1][0] != killed[0]        # run again, by a live worker
    one = {c.name: (c.report.medical_avg, c.report.if_score) for c in demo_search["out"]["results"].candidates}
    assert {c.name: (c.report.medical_avg, c.report.if_score) for c in res.candidates} == one


def test_optuna_two_workers_share_one_study_and_requeue_a_dead_workers_trial(demo_models, tmp_path):
    """Two workers ask and tell one study (journal file); the first trial's worker is SIGKILLed: that trial is
    failed and re-queued once (Optuna's retry callback), the study ends with exactly `budget` complete trials,
    each evaluated once, and the selection covers all of them."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    from medmerge.selection import optuna_search, parallel_search
    from medmerge.selection.search import SearchConfig, _study_name, check_parents, evaluate

    budget = 4
    sweep = _sweep(tmp_path, demo_models, search="optuna", budget=budget, seed=0,
                   methods={"linear": {"ratio": {"low": 0.0, "high": 1.0}}})
    cfg = SearchConfig(sweep=sweep, **DEMO_EVAL, output_dir=str(tmp_path / "out"),
                       study_storage=None)
    parents = check_parents(cfg)
    name, url = _study_name(cfg, parents), parallel_search.shared_storage_url(cfg)
    assert url.startswith("journal:") and url.endswith("optuna.journal")
    events, killed = [], []

    def kill_when_running(pid):   # the worker is SIGKILLed once its trial is RUNNING in the study
        optuna = optuna_search._optuna()
        for _ in range(1200):
            try:
                study = optuna.load_study(study_name=name, storage=parallel_search.open_storage(url))
            except KeyError:
                study = None
            running = study and [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                                 if t.user_attrs.get("worker", "").endswith(f":{pid}")]
            if running:
                killed.append((pid, running[0].number))
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.25)

    def on_event(kind, pid, key):
        events.append((kind, pid, key))
        if kind == "start" and str(key).startswith("trial-task-") and not events_started:
            events_started.append(pid)
            threading.Thread(target=kill_when_running, args=(pid,), daemon=True).start()

    events_started = []
    res = evaluate(cfg, parents, workers=2, on_event=on_event)
    assert killed
    study = optuna_search._optuna().load_study(study_name=name, storage=parallel_search.open_storage(url))
    complete = optuna_search.complete_trials(study)
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert len(complete) == budget and killed[0][1] in {t.number for t in failed}
    retries = Counter(RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in study.get_trials())
    retries.pop(None)
    assert retries == {t.number: 1 for t in failed}                    # each dead worker's trial re-queued once
    by_number = {t.number: t for t in study.get_trials()}
    for original in retries:   # its parameters were evaluated by the retry
        assert any(t.params == by_number[original].params for t in complete)
    names = [c.name for c in res.candidates]
    assert names[:2] == ["clinical", "instruct"]
    assert names[2:] == [optuna_search.trial_name(t.number, "linear") for t in complete]   # all trials, once
    assert len(set(names)) == len(names)
    assert json.loads(complete[0].user_attrs["candidate"])[0] == "linear"


def test_finetune_sft_runs_trained_side_by_side(demo_models, mlflow_server, tmp_path):
    """finetune with workers: 2: the two SFT runs are trained at once by the train_in_parallel step (each in its
    own worker process, with its memory check); the sft steps find them finished and log them; the MLflow
    record is one nested run per (initialisation, shots), as with one worker."""
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from pipelines.finetune import run

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {
        "initialisations": [{"name": "clinical", "path": str(demo_models["clinical"])},
                            {"name": "instruct", "path": str(demo_models["instruct"])}],
        "tasks": ["mts_dialog"], "data_dir": "sample", "eval_limit": 2, "shots": [8], "max_steps": 2,
        "sft": {"per_device_batch": 4, "grad_accum": 1, "max_length": 512, "gradient_checkpointing": False},
        "generation": {"max_new_tokens": 8},
        "forgetting": {"suites": ["clinical"], "data_dir": "sample", "limit": 2, "max_gen_toks": 16},
        "output_dir": str(tmp_path / "out"), "registered_model": "scale-out-sft", "experiment": "scale-out-sft",
        "tracking_uri": mlflow_server.uri, "workers": 2}}}))
    run(str(cfg))
    last = Client().get_pipeline("finetune").last_run
    trained = last.steps["train_in_parallel"].outputs["sft_trained"][0].load()
    assert sorted(trained) == ["clinical-8", "instruct-8"] and all(t["steps"] == 2 for t in trained.values())
    for name in trained:
        record = json.loads((tmp_path / "out" / "sft" / name / "medmerge_sft.json").read_text())
        assert record["steps"] == 2
    exp = api(mlflow_server.uri, "experiments/get-by-name", experiment_name="scale-out-sft")["experiment"]
    runs = api_post(mlflow_server.uri, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                                       "max_results": 100})["runs"]
    tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}
    nested = sorted(r["info"]["run_name"] for r in runs if "mlflow.parentRunId" in tags(r)
                    and tags(r).get("shots") == "8")
    assert nested == ["clinical-8", "instruct-8"]
    for r in runs:
        if r["info"]["run_name"] in trained:
            loss = {m["key"]: m["value"] for m in r["data"]["metrics"]}["train_loss"]
            assert loss == pytest.approx(trained[r["info"]["run_name"]]["train_loss"])   # the worker's training
            # and what the training cost in the worker, not the sft step's logging of it (cost.md's SFT rows)
            record = json.loads((tmp_path / "out" / "sft" / r["info"]["run_name"] / "medmerge_sft.json").read_text())
            metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
            assert record["cost"]["cost.sft_train.wall_seconds"] > 0
            assert metrics["cost.sft_train.wall_seconds"] == pytest.approx(record["cost"]["cost.sft_train.wall_seconds"])
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    assert last.steps["sft_clinical_8"].status == ExecutionStatus.COMPLETED


def test_batched_optuna_search_on_two_workers_is_the_one_worker_search(demo_models, medmerge_cache, tmp_path):
    """``batch: 2``: the parent asks and tells each round of two trials, the workers evaluate them: the trials,
    their parameters and scores, and the frontier are those of one worker (each in its own study storage)."""
    from medmerge.selection import optuna_search
    from medmerge.selection.search import SearchConfig, _study_name, check_parents, evaluate, select_frontier

    sweep = _sweep(tmp_path, demo_models, search="optuna", budget=4, batch=2, seed=1,
                   methods={"linear": {"ratio": {"low": 0.0, "high": 1.0}}, "slerp": {"ratio": {"low": 0.0, "high": 1.0}}})
    out = {}
    for n in (1, 2):
        cfg = SearchConfig(sweep=sweep, **DEMO_EVAL, output_dir=str(tmp_path / f"out-{n}"),
                           study_storage=f"sqlite:///{tmp_path / f'study-{n}.db'}")
        res = evaluate(cfg, check_parents(cfg), workers=n)
        out[n] = (res, select_frontier(res, cfg, tmp_path / f"figures-{n}"))
        study = optuna_search._optuna().load_study(study_name=_study_name(cfg, check_parents(cfg)),
                                                   storage=cfg.study_storage)
        assert len(optuna_search.complete_trials(study)) == 4 and len(study.get_trials()) == 4   # none twice
    (one, f1), (two, f2) = out[1], out[2]
    recipes = lambda res: [(c.name, c.recipe.to_yaml(), c.report.medical_avg, c.report.if_score) for c in res.candidates]
    assert recipes(two) == recipes(one) and len(recipes(one)) == 2 + 4
    assert (f2.frontier, f2.near, f2.knee) == (f1.frontier, f1.near, f1.knee)
