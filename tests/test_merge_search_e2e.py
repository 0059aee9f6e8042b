"""merge_search end to end: the session's demo run (conftest ``demo_search``: the ZenML pipeline on the demo
models, logged to the session's MLflow server), then the server's REST API is asked what a user would look
for, the pipeline is run again (all cached) and given bad input."""

from __future__ import annotations

import pytest
import torch
import yaml
from factory import greedy_continuation, read
from mlflow_api import api, api_post

pytestmark = pytest.mark.slow


def test_merge_search_pipeline(demo_search, tmp_path, capsys):
    """The session's demo run (conftest ``demo_search``: linear and slerp at 0, 0.5, 1, the knee promoted)."""
    import mlflow
    from zenml.enums import ExecutionStatus

    from medmerge.cli import main
    from pipelines.merge_search import main as pipeline_main

    out, cfg, server_uri = demo_search["out"], demo_search["config"], demo_search["uri"]
    selected = demo_search["selected"]
    frontier, versions, results = out["frontier"], out["versions"], out["results"]
    assert set(frontier.near) <= set(versions) and frontier.knee in versions
    # the promote step: nothing was staged, so the knee is promoted, and each method's best pick has an alias
    decision = out["promotion"]
    assert decision.promoted and decision.candidate == frontier.knee and "nothing staged yet" in decision.reason
    picked = {a: p["candidate"] for a, p in decision.picks.items()}
    assert set(picked) == {"pick-linear", "pick-slerp"}   # linear-0.5 and slerp-0.5: a parent is no merge
    assert set(picked.values()) == {"linear-0.5", "slerp-0.5"}
    assert set(versions) == set(frontier.near) | set(picked.values())   # the near set and the picks, only
    for alias, name in picked.items():
        assert api(server_uri, "registered-models/alias", name="e2e-model", alias=alias)["model_version"][
            "version"] == versions[name]

    # runs: one parent, one nested run per candidate, with every score as a metric
    exp = api(server_uri, "experiments/get-by-name", experiment_name="e2e")["experiment"]
    runs = api_post(server_uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    parents = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))]
    nested = [r for r in runs if r not in parents]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    # the dtype the candidates were evaluated in (auto: float32 on a CPU), and each step's cost
    assert {p["key"]: p["value"] for p in parents[0]["data"]["params"]}["dtype"] == "float32"
    parent_metrics = {m["key"] for m in parents[0]["data"]["metrics"]}
    assert {"cost.check_parents.wall_seconds", "cost.evaluate_candidates.wall_seconds",
            "cost.evaluate_candidates.peak_rss_mib", "cost.write_selected.wall_seconds"} <= parent_metrics
    assert sorted(r["info"]["run_name"] for r in nested) == sorted(
        f"{m}-{x}" for m in ("linear", "slerp") for x in ("0.0", "0.5", "1.0"))
    for r in nested:
        metrics = {m["key"] for m in r["data"]["metrics"]}
        assert {"medical_avg", "if_score", "mm_pubmedqa.acc", "mm_ifeval.prompt_level_strict_acc"} <= metrics
        # the evaluation data as MLflow datasets: name and digest, no rows
        inputs = {d["dataset"]["name"]: d["dataset"] for d in r["inputs"]["dataset_inputs"]}
        assert {"mm_pubmedqa", "mm_ifeval"} <= set(inputs) and len(inputs["mm_pubmedqa"]["digest"]) == 16
    # figures and the frontier table are artifacts of the parent run
    pid = parents[0]["info"]["run_id"]
    figs = api(server_uri, "artifacts/list", run_id=pid, path="figures")["files"]
    assert {"figures/frontier.png", "figures/trajectories.png"} <= {f["path"] for f in figs}
    assert all(f["file_size"] > 10_000 for f in figs)
    # the decision, both versions' scores and the reason, and a description summarising it all
    tags = {t["key"]: t["value"] for t in parents[0]["data"]["tags"]}
    assert tags["promotion.decision"] == "promoted" and "nothing staged yet" in tags["promotion.reason"]
    assert "**Frontier**" in tags["mlflow.note.content"] and "@pick-" in tags["mlflow.note.content"]
    top = {f["path"] for f in api(server_uri, "artifacts/list", run_id=pid)["files"]}
    assert "promotion.json" in top

    # registered versions carry their tags
    mvs = api(server_uri, "model-versions/search", filter="name='e2e-model'")["model_versions"]
    assert len(mvs) == len(versions)
    for mv in mvs:
        tags = {t["key"]: t["value"] for t in mv["tags"]}
        assert {"merge_method", "parents_weight_hashes", "parents_fingerprint", "medical_avg", "if_score", "run_id",
                "candidate", "medical_avg_stderr", "if_score_stderr"} <= set(tags)
        assert versions[tags["candidate"]] == mv["version"]
        # the selection's objectives under their own names, with the scores the selection used
        assert tags["objectives"] == "if_score,medical_avg"
        cand = results.by_name()[tags["candidate"]]
        assert float(tags["medical_avg"]) == pytest.approx(cand.report.scores["medical_avg"].value)
        assert float(tags["if_score_stderr"]) == pytest.approx(cand.report.scores["if_score"].stderr)

    # promotion: models:/NAME@staging is an MLflow Model of the knee: its weights are the merged candidate's,
    # and MLflow's transformers flavor loads it and generates
    knee_version = versions[frontier.knee]
    assert main(["promote", "e2e-model", knee_version, "--tracking-uri", server_uri]) == 0  # people still can
    mlflow.set_tracking_uri(server_uri)
    local = mlflow.artifacts.download_artifacts("models:/e2e-model@staging", dst_path=str(tmp_path / "dl"))
    got, want = read(tmp_path / "dl" / "model"), read(selected / frontier.knee)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    mv = api(server_uri, "model-versions/get", name="e2e-model", version=knee_version)["model_version"]
    assert mv["current_stage"] == "Staging" and mv["source"].startswith("models:/m-")
    # the MLflow Model generates what greedy decoding with the knee's own weights generates
    pipe = mlflow.transformers.load_model("models:/e2e-model@staging")
    text = pipe("The patient", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text == "The patient" + greedy_continuation(selected / frontier.knee, "The patient", 4)

    # nothing changed: ZenML's cache is reused and no version is registered twice
    from pipelines.merge_search import merge_search

    again = merge_search.with_options(config_path=str(cfg))()
    # check_parents always runs (it hashes the parents' weights); everything after it is cached on that hash
    # promote always runs (@staging may have moved): the knee is staged already, so nothing changes
    assert again.steps["check_parents"].status == ExecutionStatus.COMPLETED
    assert again.steps["promote"].status == ExecutionStatus.COMPLETED
    assert all(s.status == ExecutionStatus.CACHED for n, s in again.steps.items()
               if n not in ("check_parents", "promote"))
    assert len(api(server_uri, "model-versions/search", filter="name='e2e-model'")["model_versions"]) == len(versions)
    second = again.steps["promote"].output.load()
    assert not second.promoted and "already @staging" in second.reason

    # bad input: a pick naming no candidate, an unknown policy: exit 2, one line, nothing new registered
    for field, value, says in (("picks", ["slerp-0.7"], "picks: 'slerp-0.7' names no candidate"),
                               ("promote", "best", "promote: unknown policy 'best'")):
        bad = tmp_path / f"bad-{field}.yaml"
        doc = yaml.safe_load(cfg.read_text())
        doc["parameters"]["config"][field] = value
        doc["parameters"]["config"]["registered_model"] = "e2e-bad"
        bad.write_text(yaml.safe_dump(doc))
        capsys.readouterr()
        assert pipeline_main(["--config", str(bad)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("merge_search: error:")]
        assert len(err) == 1 and says in err[0], err   # one line naming it (ZenML's own log lines aside)
        assert api(server_uri, "registered-models/search", filter="name='e2e-bad'").get("registered_models", []) == []
