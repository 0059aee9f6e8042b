"""The hierarchical study ("A Novel Hierarchical Integration Method for Efficient Model Merging in Medical LLMs")
end to end on the demo models (a base included): the hierarchical-study-methods preset through
``medmerge sweep``, ``medmerge evaluate-sweep`` and merge_search (medical5 5-shot with stderr, the comparison
table and figure in MLflow), and an Optuna search killed during trial 5 that resumes to its budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from factory import assert_read_once
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


def test_cli_runs_the_hierarchical_study_preset(demo_models, tmp_path, parent_reads):
    from medmerge.cli import main

    cfg = sweep_yaml(tmp_path, demo_models, preset="hierarchical-study-methods")
    assert main(["sweep", str(cfg), str(tmp_path / "out"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(SIX_METHODS)
    for m in SIX_METHODS:
        assert yaml.safe_load((tmp_path / "out" / m / "mergekit_config.yml").read_text())["merge_method"] == m
    for ref in ("clinical", "instruct", "base"):    # six methods, three parents, each read once
        assert_read_once(parent_reads, demo_models[ref])

    reports = tmp_path / "reports"
    assert main(["evaluate-sweep", str(cfg), "--out", str(reports), "--suite", "medical5",
                 "--data-dir", "sample", "--limit", "2", "--no-cache"]) == 0
    assert sorted(p.stem for p in reports.iterdir()) == sorted(["clinical", "instruct", *SIX_METHODS])
    rep = yaml.safe_load((reports / "dare_ties.json").read_text())
    assert set(rep["tasks"]) == MEDICAL5
    for t in rep["tasks"].values():
        assert t["num_fewshot"] == 5 and t["metrics"]["acc"]["stderr"] is not None


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


def test_merge_search_hierarchical_preset_logs_the_comparison(demo_models, tmp_path):
    from medmerge.tracking.server import start, stop
    from pipelines.merge_search import run

    state = tmp_path / "mlflow"
    server = start(state, port=0)
    try:
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
    finally:
        stop(state)


def _complete(storage_file: Path) -> int:
    import sqlite3

    if not storage_file.exists():
        return 0
    try:
        with sqlite3.connect(storage_file, timeout=1) as db:
            return db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.OperationalError:   # tables not created yet
        return 0


def test_optuna_search_killed_in_trial_5_resumes_without_duplicates(demo_models, tmp_path):
    from medmerge.tracking.server import start, stop

    state = tmp_path / "mlflow"
    server = start(state, port=0)
    study = tmp_path / "study.db"
    try:
        sweep = sweep_yaml(tmp_path, demo_models, search="optuna", budget=8, seed=1, methods={
            "linear": {"ratio": {"low": 0.0, "high": 1.0}},
            "slerp": {"t": {"low": 0.0, "high": 1.0, "gradient": 3}},
            "dare_ties": {"weight": 0.5, "density": {"low": 0.5, "high": 1.0}}})
        cfg = _run_config(tmp_path, sweep, server.uri, study_storage=f"sqlite:///{study}", limit=6)
        cmd = [sys.executable, "-m", "pipelines.merge_search", "--config", str(cfg)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while _complete(study) < 4:
            assert proc.poll() is None and time.time() < deadline, "the search ended before 4 trials"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)        # during trial 5
        proc.wait()
        assert _complete(study) == 4

        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        from medmerge import optuna_search

        study_obj = optuna_search.open_study(f"sqlite:///{study}", _study_name(study), 1)
        assert len(optuna_search.complete_trials(study_obj)) == 8
        parents, nested = _runs(server.uri, "hierarchical")
        assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
        run_names = [r["info"]["run_name"] for r in nested]
        trials = [n for n in run_names if n.startswith("trial-")]
        assert len(trials) == 8 == len(set(trials)) and sorted(set(run_names) - set(trials)) == ["clinical",
                                                                                                  "instruct"]
        assert len(run_names) == len(set(run_names)) == 10
    finally:
        stop(state)


def _study_name(study: Path) -> str:
    import sqlite3

    with sqlite3.connect(study) as db:
        (name,) = db.execute("select study_name from studies").fetchone()
    return name
