"""finetune end to end: the ZenML pipeline on the demo models and the real MTS-Dialog data, against a real
MLflow server on a free loopback port (the session's: conftest ``mlflow_server``); then the server's REST API
is asked what a user would look for.

1. As shipped, MTS-Dialog's train split fails validation (a duplicated pair, dialogues longer than the
   demo models' 512-token context): the run stops, naming them, and the report is an MLflow artifact.
2. With the opt-in cleaning, one merge and one parent are fine-tuned at 8 and 16 shots (the forgetting
   study's learning rate: nothing is forgotten): nested runs, metrics, the learning-curve figure, the forgetting
   tables, gated registered versions; a rerun is cached and registers nothing new.
3. (second tier, ``integration``) A forced drop (a learning rate that makes the model's IFEval fall) fails
   the gate; promotion refuses. This run asks for ``log_samples: 2``: exactly two rows of clinical text reach
   MLflow.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from factory import SHARED_DATA as DATA
from mlflow_api import api, api_post

pytestmark = pytest.mark.slow


def artifacts(uri: str, run_id: str, path: str | None = None) -> dict[str, int]:
    params = {"run_id": run_id} | ({"path": path} if path else {})
    return {f["path"]: int(f.get("file_size", 0)) for f in api(uri, "artifacts/list", **params).get("files", [])}


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def write_config(path: Path, **config) -> str:
    path.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    return str(path)


def base_config(demo_models, tmp_path: Path, uri: str, **overrides) -> dict:
    """The finetune run config both tests start from: MTS-Dialog as shipped, 8 and 16 shots, the forgetting
    check on the clinical suite and IFEval."""
    return {**dict(
        task="mts_dialog", data_dir=str(DATA), eval_split="test1", eval_limit=8, shots=[8, 16],
        sft={"per_device_batch": 8, "grad_accum": 2, "max_length": 512, "min_steps_few_shot": 8,
             "gradient_checkpointing": False},
        generation={"max_new_tokens": 32},
        forgetting={"suites": ["clinical", "ifeval"], "data_dir": "sample", "limit": 8, "max_gen_toks": 48},
        output_dir=str(tmp_path / "out"), registered_model="e2e-sft", experiment="e2e-finetune",
        tracking_uri=uri), **overrides}


@pytest.mark.shared_data("mts_dialog")
def test_finetune_pipeline(demo_models, mlflow_server, tmp_path, capsys):
    from zenml.enums import ExecutionStatus

    from medmerge.cli import main as cli
    from medmerge.merge.engine import merge
    from medmerge.merge.recipe import parse_recipe
    from pipelines.finetune import main, run

    merged = merge(parse_recipe({"merge_method": "linear", "dtype": "float32", "models": [
        {"model": str(demo_models["clinical"]), "parameters": {"weight": 0.5}},
        {"model": str(demo_models["instruct"]), "parameters": {"weight": 0.5}}]}), tmp_path / "merge-0.5", quiet=True)
    uri = mlflow_server.uri
    base = base_config(demo_models, tmp_path, uri, initialisations=[
        {"name": "linear-0.5", "path": str(merged)}, {"name": "clinical", "path": str(demo_models["clinical"])}])

    # 1. the real train split as shipped: validation stops the run and says why
    assert main(["--config", write_config(tmp_path / "raw.yaml", **base)]) == 2
    err = capsys.readouterr().err
    assert "input_pairs_unique" in err or "duplicate" in err
    assert "train-1109" in err and "input_fits_context" in err and "512 tokens" in err
    exp_id = api(uri, "experiments/get-by-name", experiment_name="e2e-finetune")["experiment"]["experiment_id"]
    failed = api_post(uri, "runs/search", {"experiment_ids": [exp_id]})["runs"]
    assert [r["info"]["status"] for r in failed] == ["FAILED"]
    reports = artifacts(uri, failed[0]["info"]["run_id"], "validation")
    assert "validation/mts_dialog_train.md" in reports and "validation/mts_dialog_train.json" in reports
    assert not (tmp_path / "out" / "sft").exists()  # nothing trained, nothing registered
    with pytest.raises(urllib.error.HTTPError, match="HTTP Error 404") as never_registered:
        api(uri, "registered-models/get", name="e2e-sft")
    assert never_registered.value.code == 404

    # 2. cleaned (opt-in, the dropped ids logged), the forgetting study's learning rate: nothing forgotten
    # shots 0 scores each initialisation without SFT (registered: nothing); the promote step stages the best
    cleaned = {**base, "drop_duplicate_pairs": True, "drop_overlong": True, "shots": [0, 8, 16],
               "promote": "best_composite"}
    out = run(write_config(tmp_path / "clean.yaml", **cleaned))
    summary, tracking = out["summary"], out["tracking"]
    assert set(summary.versions) == {"linear-0.5-8", "linear-0.5-16", "clinical-8", "clinical-16"}
    assert all(summary.gate.values()), summary.forgetting_table
    assert set(summary.curves) == {"linear-0.5", "clinical"} and set(summary.curves["clinical"]) == {0, 8, 16}
    t2 = summary.table2.splitlines()
    rows = [line for line in t2[2:] if line.startswith("| ")]
    assert t2[0] == "| initialisation | shots | mts_dialog |" and len(rows) == 6   # init x shots
    assert rows[0].startswith("| linear-0.5 | 0 |") and any("**" in line for line in rows)   # best marked
    decision = out["promotion"]
    best = max(summary.versions, key=lambda k: summary.curves[k.rsplit("-", 1)[0]][int(k.rsplit("-", 1)[1])])
    assert decision.promoted and decision.candidate == best and "nothing staged yet" in decision.reason

    pid = tracking.parent_run_id
    parent = api(uri, "runs/get", run_id=pid)["run"]
    assert parent["info"]["status"] == "FINISHED"
    top = artifacts(uri, pid)
    assert {"learning_curves.txt", "learning_curves.json", "forgetting.md", "registered_versions.json",
            "table2.md", "table2.json", "promotion.json", "cost.md"} <= set(top)
    cost_md = urllib.request.urlopen(f"{uri}/get-artifact?path=cost.md&run_uuid={pid}", timeout=30).read().decode()
    assert cost_md.startswith("# Cost: merge vs SFT") and "| SFT clinical-8 | " in cost_md
    assert parent["data"]["metrics"] and any(m["key"] == "cost.validate_data.wall_seconds"
                                             for m in parent["data"]["metrics"])
    figs = artifacts(uri, pid, "figures")
    assert figs["figures/learning_curves.png"] > 10_000
    val = artifacts(uri, pid, "validation")
    assert "validation/dropped_ids.json" in val and "validation/mts_dialog_train.md" in val
    used = {d["dataset"]["name"]: d for d in parent["inputs"]["dataset_inputs"]}   # digests, never rows
    assert set(used) == {"mts_dialog:train", "mts_dialog:test1"}
    assert used["mts_dialog:train"]["tags"] == [{"key": "mlflow.data.context", "value": "training"}]
    params = {p["key"]: p["value"] for p in parent["data"]["params"]}
    assert params["shots"] == "0,8,16" and params["initialisations"] == "linear-0.5,clinical"

    nested = api_post(uri, "runs/search", {"experiment_ids": [exp_id],
                                           "filter": f"tags.mlflow.parentRunId = '{pid}'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in nested) == sorted([*summary.versions, "linear-0.5-0", "clinical-0"])
    for r in nested:
        m = {x["key"]: x["value"] for x in r["data"]["metrics"]}
        parts = [m[k] for k in ("bleu", "meteor", "rouge1", "rouge2", "rougeL", "bertscore_f1")]
        assert all(0.0 <= v <= 1.0 for v in parts) and m["composite"] == pytest.approx(sum(parts) / 6)
        assert "after.if_score" in m and r["info"]["status"] == "FINISHED"
        assert ("train_loss" in m) == (not r["info"]["run_name"].endswith("-0")), r["info"]["run_name"]  # 0: no SFT
        assert tags(r)["forgetting_gate"] == "passed"
        files = artifacts(uri, r["info"]["run_id"])
        assert "forgetting.txt" in files and "samples.json" not in files  # no clinical text unless asked
        rp = {p["key"]: p["value"] for p in r["data"]["params"]}
        assert rp["bertscore_model"].endswith("all-MiniLM-L6-v2") and rp["bertscore_layer"] == "6"
        assert rp["generation_dtype"] == rp["eval_dtype"] == rp.get("dtype", "float32") == "float32"  # auto, CPU

    versions = api(uri, "model-versions/search", filter="name='e2e-sft'")["model_versions"]
    assert len(versions) == 4
    vt = {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])} for v in versions}
    assert {t["forgetting_gate"] for t in vt.values()} == {"passed"}
    assert {t["initialisation"] for t in vt.values()} == {"linear-0.5", "clinical"}
    passed_version = decision.version
    assert api(uri, "registered-models/alias", name="e2e-sft", alias="staging")["model_version"]["version"] == \
        passed_version
    assert cli(["promote", "e2e-sft", passed_version, "--tracking-uri", uri]) == 0   # people still can
    capsys.readouterr()

    # a rerun with nothing changed: every cached step reused, no new version
    again = run(write_config(tmp_path / "clean.yaml", **cleaned))
    steps = again["run"].steps
    assert steps["load_data"].status == ExecutionStatus.COMPLETED  # always re-reads (content-hashed)
    assert all(s.status == ExecutionStatus.CACHED for n, s in steps.items()
               if n not in ("load_data", "resolve_initialisations", "promote_finetuned")), \
        {n: s.status for n, s in steps.items()}
    assert "already @staging" in again["promotion"].reason and not again["promotion"].promoted
    assert len(api(uri, "model-versions/search", filter="name='e2e-sft'")["model_versions"]) == 4


@pytest.mark.integration
@pytest.mark.shared_data("mts_dialog")
def test_a_forced_drop_fails_the_gate_and_nothing_is_promoted(demo_models, mlflow_server, tmp_path, capsys):
    """A learning rate that wrecks instruction following: the forgetting gate fails, the promote step stages
    nothing, the CLI refuses to promote the version; ``log_samples: 2`` sends exactly two rows of clinical text
    to MLflow. (The second tier: 60 SFT steps; the fast tier's test above covers the pipeline.)"""
    from medmerge.cli import main as cli
    from pipelines.finetune import run

    uri = mlflow_server.uri
    forced = base_config(demo_models, tmp_path, uri, initialisations=[
        {"name": "clinical", "path": str(demo_models["clinical"])}], drop_duplicate_pairs=True, drop_overlong=True,
        promote="best_composite", log_samples=2, registered_model="e2e-sft-forced", experiment="e2e-finetune-forced")
    forced.update(shots=[16], sft={**forced["sft"], "learning_rate": 3e-3, "min_steps_few_shot": 60},
                  forgetting={**forced["forgetting"], "suites": ["ifeval"]})
    out = run(write_config(tmp_path / "forced.yaml", **forced))
    s = out["summary"]
    assert s.gate == {"clinical-16": False}
    assert not out["promotion"].promoted and "no fine-tuned model passed" in out["promotion"].reason
    assert "if_score" in s.forgetting_table and "FORGOT" in s.forgetting_table
    bad = s.versions["clinical-16"]
    # log_samples asked for two rows of clinical text: exactly two, with the generation
    exp_id = api(uri, "experiments/get-by-name", experiment_name="e2e-finetune-forced")["experiment"]["experiment_id"]
    forced_run = api_post(uri, "runs/search", {"experiment_ids": [exp_id], "filter":
                          f"tags.mlflow.parentRunId = '{out['tracking'].parent_run_id}'"})["runs"][0]
    samples = json.loads(urllib.request.urlopen(
        f"{uri}/get-artifact?path=samples.json&run_uuid={forced_run['info']['run_id']}", timeout=30).read())
    assert len(samples) == 2 and set(samples[0]) == {"id", "input", "target", "prediction"}
    assert cli(["promote", "e2e-sft-forced", bad, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"refusing to promote e2e-sft-forced version {bad}: its forgetting gate failed" in err and "if_score" in err
    with pytest.raises(urllib.error.HTTPError, match="HTTP Error 400") as missing:   # nothing was staged
        api(uri, "registered-models/alias", name="e2e-sft-forced", alias="staging")
    assert "alias staging not found" in missing.value.read().decode()   # MLflow 3: INVALID_PARAMETER_VALUE
