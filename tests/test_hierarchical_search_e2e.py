"""The hierarchical study ("A Novel Hierarchical Integration Method for Efficient Model Merging in Medical LLMs")
end to end on the demo models (a base included): the hierarchical-study-methods preset through
``medmerge sweep``, ``medmerge evaluate-sweep`` and merge_search (medical5 5-shot with stderr, the comparison
table and figure in MLflow), and an Optuna search killed inside trial 5 that re-queues it and resumes to its budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from factory import assert_read_once, binomial_stderr
from mlflow_api import api, api_post

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]  # two pipeline runs and a server on 2 cores

REPO = Path(__file__).resolve().parents[1]
SIX_METHODS = ["linear", "task_arithmetic", "dare_ties", "della", "breadcrumbs", "hierarchical_ot"]
MEDICAL5 = {"mm_medqa_4options", "mm_pubmedqa", "mm_mmlu_professional_medicine", "mm_medmcqa", "mm_hellaswag"}


def sweep_yaml(tmp_path, demo_models, **extra) -> Path:
    p = tmp_path / "sweep.yml"
    p.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]), "instruct": str(demo_models["instruct"]),
                                 "base": str(demo_models["base"]), **extra}))
    return p


def test_cli_runs_the_hierarchical_study_preset(demo_models, demo_eval_cache, tmp_path, parent_reads, monkeypatch):
    from medmerge.cli import main

    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(demo_eval_cache))   # the pipeline test below reads these scores

    cfg = sweep_yaml(tmp_path, demo_models, preset="hierarchical-study-methods")
    assert main(["sweep", str(cfg), str(tmp_path / "out"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(SIX_METHODS)
    for m in SIX_METHODS:
        assert yaml.safe_load((tmp_path / "out" / m / "mergekit_config.yml").read_text())["merge_method"] == m
    for ref in ("clinical", "instruct", "base"):    # six methods, three parents, each read once
        assert_read_once(parent_reads, demo_models[ref])

    reports = tmp_path / "reports"
    assert main(["evaluate-sweep", str(cfg), "--out", str(reports), "--suite", "medical5",
                 "--data-dir", "sample", "--limit", "2"]) == 0
    assert sorted(p.stem for p in reports.iterdir()) == sorted(["clinical", "instruct", *SIX_METHODS])
    rep = yaml.safe_load((reports / "dare_ties.json").read_text())
    assert set(rep["tasks"]) == MEDICAL5
    for name, t in rep["tasks"].items():
        acc = t["metrics"]["acc"]
        assert t["num_fewshot"] == 5 and t["n_samples"] == 2, name
        assert acc["value"] in (0.0, 0.5, 1.0), name                       # a share of two documents
        assert acc["stderr"] == pytest.approx(binomial_stderr(acc["value"], 2)), name


def _run_config(tmp_path, sweep, server_uri, **extra) -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {
        "sweep": str(sweep), "suites": ["medical5"], "data_dir": "sample", "limit": 2,
        "objectives": ["mm_hellaswag", "medical5"], "output_dir": str(tmp_path / "selected"),
        "registered_model": "hierarchical", "experiment": "hierarchical", "tracking_uri": server_uri, **extra}}}))
    return cfg


def _runs(uri: str, experiment: str):
    exp = api(uri, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    runs = api_post(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 200})["runs"]
    parents = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    return parents, [r for r in runs if r not in parents]


def test_merge_search_hierarchical_preset_logs_the_comparison(demo_models, mlflow_server, demo_eval_cache,
                                                              tmp_path, monkeypatch):
    from pipelines.merge_search import run

    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(demo_eval_cache))   # the CLI test's scores, when it ran first
    server = mlflow_server
    cfg = _run_config(tmp_path, sweep_yaml(tmp_path, demo_models, preset="hierarchical-study-methods"), server.uri)
    out = run(str(cfg))
    assert out["frontier"].knee in out["versions"]
    parents, nested = _runs(server.uri, "hierarchical")
    assert len(parents) == 1
    assert sorted(r["info"]["run_name"] for r in nested) == sorted(["clinical", "instruct", *SIX_METHODS])
    for r in nested:
        metrics = {m["key"] for m in r["data"]["metrics"]}
        assert {"mm_hellaswag.acc", "mm_pubmedqa.acc"} <= metrics
    pid = parents[0]["info"]["run_id"]
    top = {f["path"]: f for f in api(server.uri, "artifacts/list", run_id=pid)["files"]}
    assert {"comparison.md", "comparison.json"} <= set(top)
    figs = {f["path"]: f for f in api(server.uri, "artifacts/list", run_id=pid, path="figures")["files"]}
    assert figs["figures/comparison.png"]["file_size"] > 10_000 and "figures/frontier.png" in figs
    with urllib.request.urlopen(f"{server.uri}/get-artifact?path=comparison.md&run_uuid={pid}", timeout=30) as r:
        md = r.read().decode()
    assert md.startswith("| rank | candidate | method | parameters |") and "± " in md and "**" in md
    for name in ["clinical (parent: clinical)", "instruct (parent: instruct)", *SIX_METHODS]:
        assert f"| {name} |" in md
    for t in MEDICAL5:
        assert t.removeprefix("mm_") in md.splitlines()[0]


def _study_state(storage_file: Path) -> tuple[int, list[tuple[int, str | None]]]:
    """(complete trials, [(number, the candidate it wrote or None) for each RUNNING trial]) read from the
    study's sqlite file while the search writes it."""
    import sqlite3

    if not storage_file.exists():
        return 0, []
    try:
        with sqlite3.connect(storage_file, timeout=1) as db:
            complete = db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
            running = db.execute(
                "select t.number, a.value_json from trials t left join trial_user_attributes a "
                "on a.trial_id = t.trial_id and a.key = 'candidate' where t.state = 'RUNNING'").fetchall()
    except sqlite3.OperationalError:   # tables not created yet, or locked for a moment
        return 0, []
    # a user attribute is stored JSON-encoded; this one is itself a JSON string: [method, params]
    return complete, [(n, json.loads(json.loads(v)) if v else None) for n, v in running]


def _evaluated(cache: Path) -> dict[Path, str]:
    """The evaluation cache's results: {file: task}."""
    out = {}
    for f in (cache / "eval").glob("*/*.json"):
        try:
            out[f] = json.loads(f.read_text())["task"]
        except (OSError, ValueError, KeyError):   # being written (atomically: a rename), or not a result
            continue
    return out


def test_optuna_search_killed_inside_trial_5_requeues_it_and_evaluates_it_once(demo_models, mlflow_server,
                                                                                medmerge_cache, tmp_path):
    """SIGKILL inside trial 5, proven by what the trial wrote: the candidate it records before its evaluation
    (a user attribute in the study) while the study still counts four complete trials. The rerun fails that
    trial, re-queues its parameters (evaluated once; any task it finished before the kill is read from the
    cache) and completes the budget. (The kill used to wait for a task in the cache as well; the cache is
    written when a candidate's evaluation returns, so on a quiet machine trial 5 finished first.)"""
    from zenml.client import Client

    from medmerge.selection import optuna_search

    study = tmp_path / "study.db"
    sweep = sweep_yaml(tmp_path, demo_models, search="optuna", budget=8, seed=1, methods={
        "linear": {"ratio": {"low": 0.0, "high": 1.0}},
        "slerp": {"t": {"low": 0.0, "high": 1.0, "gradient": 3}},
        "dare_ties": {"weight": 0.5, "density": {"low": 0.5, "high": 1.0}}})
    cfg = _run_config(tmp_path, sweep, mlflow_server.uri, study_storage=f"sqlite:///{study}", limit=6,
                      registered_model="hierarchical-optuna", experiment="hierarchical-optuna")
    cmd = [sys.executable, "-m", "pipelines.merge_search", "--config", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}   # MEDMERGE_CACHE_DIR: this test's cache (medmerge_cache)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    before_trial_5 = None   # what the cache held once four trials were complete
    deadline = time.time() + 900
    try:
        while True:
            assert proc.poll() is None, f"the search exited ({proc.returncode}) before the kill point"
            assert time.time() < deadline, "the kill point was not reached in 900 s"
            complete, running = _study_state(study)
            assert complete <= 4, "trial 5 finished before the test saw it evaluate a task"
            if complete == 4 and before_trial_5 is None:
                before_trial_5 = _evaluated(medmerge_cache)
            if before_trial_5 is not None and running and running[0][1] is not None:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    complete, running = _study_state(study)
    assert complete == 4 and [n for n, _ in running] == [4], running        # killed inside trial 5 (number 4)
    killed = running[0][1]                                                    # [method, params]
    done_in_trial_5 = {f: t for f, t in _evaluated(medmerge_cache).items() if f not in before_trial_5}

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    study_obj = optuna_search.open_study(f"sqlite:///{study}", _study_name(study), 1)
    trials = {t.number: t for t in study_obj.get_trials(deepcopy=False)}
    assert trials[4].state.name == "FAIL"                                    # the killed trial
    complete_trials = optuna_search.complete_trials(study_obj)
    assert len(complete_trials) == 8
    again = [t for t in complete_trials if json.loads(t.user_attrs["candidate"]) == killed]
    # re-queued: its parameters enqueued (fixed), asked first on resume, evaluated by exactly one trial
    assert [t.number for t in again] == [5] and again[0].params == trials[4].params, [t.number for t in again]
    assert again[0].system_attrs.get("fixed_params"), again[0].system_attrs
    # the tasks trial 5 had finished before the kill were read from the cache, not evaluated again
    results = Client().get_pipeline("merge_search").last_run.steps["evaluate_candidates"].output.load()
    requeued = next(c for c in results.candidates if c.name == optuna_search.trial_name(5, killed[0]))
    assert set(done_in_trial_5.values()) <= set(requeued.report.cached_tasks), requeued.report.cached_tasks
    assert len(requeued.report.tasks) == len(MEDICAL5)

    parents, nested = _runs(mlflow_server.uri, "hierarchical-optuna")
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    run_names = [r["info"]["run_name"] for r in nested]
    trial_runs = [n for n in run_names if n.startswith("trial-")]
    assert len(trial_runs) == 8 == len(set(trial_runs)) and sorted(set(run_names) - set(trial_runs)) == [
        "clinical", "instruct"]
    assert not any(n.startswith("trial-004-") for n in trial_runs)          # the killed trial logged nothing
    assert len(run_names) == len(set(run_names)) == 10


def _study_name(study: Path) -> str:
    import sqlite3

    with sqlite3.connect(study) as db:
        (name,) = db.execute("select study_name from studies").fetchone()
    return name
