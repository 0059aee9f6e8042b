"""Run logging, registration, promotion and serving against a real MLflow server on a free loopback port
(the session's: conftest ``mlflow_server``)."""

from __future__ import annotations

import pytest
import torch
from factory import greedy_continuation, make_family, read

from medmerge.cli import main
from medmerge.evaluation.report import EvalReport, MetricValue, TaskResult
from medmerge.merge.engine import merge
from medmerge.merge.recipe import parse_recipe
from medmerge.tracking import registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(mlflow_server):
    """The session's MLflow server (conftest): its URI."""
    return mlflow_server.uri


def fake_report(name: str, med: float, ifs: float) -> EvalReport:
    task = TaskResult(task="mm_pubmedqa", metrics={"acc": MetricValue(value=med, stderr=0.01)}, n_samples=10,
                      num_fewshot=0, config_hash="0" * 64)
    return EvalReport(model=name, model_fingerprint="f" * 64, suites=["clinical"], tasks={"mm_pubmedqa": task},
                      scores={"medical_avg": MetricValue(value=med, stderr=0.01), "if_score": MetricValue(value=ifs)},
                      lm_eval_version="x", medmerge_version="x", seconds=1.0)


def test_log_register_promote(server, tmp_path):
    import mlflow

    fam = make_family(tmp_path / "fam", n_children=2)
    recipes = {r: parse_recipe({"merge_method": "linear", "models": [
        {"model": str(fam["m0"]), "parameters": {"weight": 1 - r}},
        {"model": str(fam["m1"]), "parameters": {"weight": r}}]}) for r in (0.3, 0.7)}
    ckpts = {r: merge(rec, tmp_path / f"c{r}", quiet=True) for r, rec in recipes.items()}

    c = registry.client(server)
    exp = c.get_experiment_by_name("medmerge-test") or c.get_experiment(c.create_experiment("medmerge-test"))
    parent = c.create_run(exp.experiment_id, run_name="sweep")
    runs = {r: registry.log_candidate(parent.info.run_id, exp.experiment_id, f"linear-{r}", rec,
                                      fake_report(f"linear-{r}", 0.4 + r / 10, 0.5 - r / 10), server)
            for r, rec in recipes.items()}
    c.set_terminated(parent.info.run_id)
    nested = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in nested} == {"linear-0.3", "linear-0.7"}
    got = c.get_run(runs[0.3]).data
    assert got.metrics["medical_avg"] == pytest.approx(0.43) and got.metrics["mm_pubmedqa.acc_stderr"] == 0.01
    assert got.params["merge_method"] == "linear"

    reg = {r: registry.register_checkpoint("medmerge-demo", ckpts[r], runs[r], identity=f"id-{r}",
                                           tags={"medical_avg": 0.4 + r / 10, "if_score": 0.5 - r / 10}, tracking_uri=server)
           for r in (0.3, 0.7)}
    assert [x.reused for x in reg.values()] == [False, False]
    again = registry.register_checkpoint("medmerge-demo", ckpts[0.3], runs[0.3], identity="id-0.3", tags={},
                                         tracking_uri=server)
    assert again.reused and again.version == reg[0.3].version
    assert len(c.search_model_versions("name='medmerge-demo'")) == 2

    # each version is an MLflow Model of its candidate run, its metrics linked, the checkpoint stored once
    mv = c.get_model_version("medmerge-demo", reg[0.3].version)
    assert mv.source == f"models:/{reg[0.3].model_id}"
    assert "medmerge" in mv.description and "model.safetensors" in mv.description  # the model card
    assert mv.description.startswith("# c0.3\n")   # its body: titled with the checkpoint, no YAML front matter
    logged = c.get_logged_model(reg[0.3].model_id)
    assert logged.source_run_id == runs[0.3] and logged.experiment_id == exp.experiment_id
    assert {m.key: m.value for m in logged.metrics}["medical_avg"] == pytest.approx(0.43)
    assert logged.params["merge_method"] == "linear"
    assert [a.path for a in c.list_artifacts(runs[0.3])] == ["report.json"]   # no checkpoint/ copy in the run
    files = {a.path for a in c.list_logged_model_artifacts(reg[0.3].model_id)}
    assert {"MLmodel", "model", "input_example.json", "model_card.md"} <= files

    assert main(["promote", "medmerge-demo", reg[0.3].version, "--tracking-uri", server]) == 0
    local = mlflow.artifacts.download_artifacts("models:/medmerge-demo@staging", dst_path=str(tmp_path / "dl"))
    model_yaml = (tmp_path / "dl" / "MLmodel").read_text()
    assert "transformers:" in model_yaml and "task: text-generation" in model_yaml and "signature:" in model_yaml
    downloaded, expected = read(tmp_path / "dl" / "model"), read(ckpts[0.3])
    assert sorted(downloaded) == sorted(expected) and all(torch.equal(downloaded[k], expected[k]) for k in expected)
    assert c.get_model_version("medmerge-demo", reg[0.3].version).current_stage == "Staging"

    reason = registry.promote("medmerge-demo", reg[0.7].version, server)
    assert f"replaces v{reg[0.3].version}" in reason
    import re
    assert len(re.findall(r"(?:medical_avg|if_score)=\d\.\d{4}(?:[,;)]|$)", reason)) == 4, reason   # read, not 16 digits
    assert c.get_model_version("medmerge-demo", reg[0.3].version).current_stage == "Archived"
    assert c.get_model_version_by_alias("medmerge-demo", "staging").version == reg[0.7].version

    # what people do with a promoted model: load it with MLflow's transformers flavor and generate
    pipe = mlflow.transformers.load_model("models:/medmerge-demo@staging")
    out = pipe("w1 w2 w3", max_new_tokens=4, do_sample=False)
    assert isinstance(out[0]["generated_text"], str) and len(out[0]["generated_text"].split()) > 3


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_staged_model_is_served(demo_search, tmp_path):
    """``mlflow models serve -m models:/NAME@staging --env-manager local`` on the session's demo run: /invocations
    answers with what greedy decoding with the staged candidate's own weights generates, for the same prompt."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    model, knee = demo_search["model"], demo_search["out"]["frontier"].knee
    staged = registry.client(demo_search["uri"]).get_model_version_by_alias(model, "staging")
    assert staged.tags["candidate"] == knee
    port = free_port()
    mlflow_bin = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([mlflow_bin, "models", "serve", "-m", f"models:/{model}@staging",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            # the server runs `uvicorn` from PATH: the venv's bin, as with an activated venv
                            env={**os.environ, "MLFLOW_TRACKING_URI": demo_search["uri"],
                                 "PATH": os.path.dirname(mlflow_bin) + os.pathsep + os.environ.get("PATH", "")},
                            stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "serve.log", "w"), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    prompts = ["Doctor: How are you feeling today?", "The patient"]
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow models serve did not answer /ping within 180 s"
            time.sleep(1)
        body = json.dumps({"inputs": prompts, "params": {"max_new_tokens": 6}}).encode()
        req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        got = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)   # the server and the workers it started: its own process group
            proc.wait(timeout=30)
    # the leader's exit does not wait for its workers: wait (30 s at most) until no process of the group is left
    gone_by = time.time() + 30
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.time() < gone_by, "mlflow models serve's workers outlived SIGTERM by 30 s"
        time.sleep(0.2)
    want = [greedy_continuation(demo_search["selected"] / knee, p, 6) for p in prompts]
    # the prompt and its greedy continuation, token for token (MLflow's pyfunc strips the text's ends)
    assert got == [(p + w).strip() for p, w in zip(prompts, want)], (got, want)
    with pytest.raises(OSError, match="Connection refused"):   # the served model went with its process group
        urllib.request.urlopen(f"{url}/ping", timeout=5)


def test_promotion_refusals(server, tmp_path, capsys):
    c = registry.client(server)
    assert main(["promote", "medmerge-demo", "999", "--tracking-uri", server]) == 2
    assert "has no version 999" in capsys.readouterr().err
    exp_id = c.create_experiment("medmerge-failed")
    run = c.create_run(exp_id)
    fam = make_family(tmp_path / "fam", n_children=1)
    reg = registry.register_checkpoint("medmerge-failing", fam["m0"], run.info.run_id, "idf", {}, server)
    c.set_terminated(run.info.run_id, status="FAILED")
    assert main(["promote", "medmerge-failing", reg.version, "--tracking-uri", server]) == 2
    assert "is FAILED" in capsys.readouterr().err


def test_unreachable_server_is_named(capsys):
    assert main(["promote", "m", "1", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "http://127.0.0.1:9 is not reachable" in capsys.readouterr().err


def test_promotion_refuses_failed_forgetting_gate_unless_forced(server, tmp_path, capsys):
    c = registry.client(server)
    exp_id = c.create_experiment("medmerge-gate")
    fam = make_family(tmp_path / "fam", n_children=2)
    versions = {}
    for gate, model in (("failed", fam["m0"]), ("passed", fam["m1"])):
        run = c.create_run(exp_id)
        tags = {"forgetting_gate": gate}
        if gate == "failed":
            tags["forgetting_failures"] = "if_score 0.2000 -> 0.0000 (drop 0.2000 > allowed 0.0200)"
        versions[gate] = registry.register_checkpoint("medmerge-gated", model, run.info.run_id, f"id-{gate}", tags,
                                                      server).version
        c.set_terminated(run.info.run_id, status="FINISHED")

    assert main(["promote", "medmerge-gated", versions["failed"], "--tracking-uri", server]) == 2
    err = capsys.readouterr().err
    assert "forgetting gate failed" in err and "if_score 0.2000 -> 0.0000" in err and "--force" in err
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="alias staging not found") as refused:  # nothing was staged
        c.get_model_version_by_alias("medmerge-gated", "staging")
    assert "alias staging not found" in str(refused.value)   # MLflow 3 answers INVALID_PARAMETER_VALUE

    assert main(["promote", "medmerge-gated", versions["passed"], "--tracking-uri", server]) == 0
    assert c.get_model_version_by_alias("medmerge-gated", "staging").version == versions["passed"]

    assert main(["promote", "medmerge-gated", versions["failed"], "--tracking-uri", server, "--force"]) == 0
    assert "FORCED past a failed forgetting gate" in capsys.readouterr().out
    mv = c.get_model_version("medmerge-gated", versions["failed"])
    assert mv.current_stage == "Staging" and "FORCED" in mv.tags["promotion_reason"]
