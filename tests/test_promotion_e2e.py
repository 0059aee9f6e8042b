"""Promotion end to end: merge_search stages a version on a real MLflow server, then a second search's
candidate is compared with that ``@staging`` version under the README's rule ("promoted unless it is worse
somewhere and better nowhere", a difference counting only beyond sqrt(se_c² + se_s²)):

* worse beyond the combined stderr on both objectives: refused, ``@staging`` stays;
* better: promoted, the old version archived;
* worse, but within the combined stderr on both: not dominated, so promoted (the README's rule).

The pipelines run in-process on the demo models (one candidate each, merged and written for real); only
lm-eval's scoring is replaced (``ModelEvaluator.run``) by scores set per candidate, so the outcome is known.
The registry, aliases, stages, tags, the staged version's report and ``promotion.json`` are real, and are
read back over the server's REST API.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
import yaml
from mlflow_api import api

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TASK_SE = 0.10   # each clinical task's accuracy stderr: Medical Avg's is 0.10 / sqrt(10) = 0.0316
IF_SE = 0.05     # IFEval's two accuracies' stderr: the IF score's is 0.05
# candidate -> (every clinical task's accuracy, IFEval's two accuracies): Medical Avg and IF score
SCORES = {"linear-0.3": (0.50, 0.40),    # the first search's: staged
          "linear-0.4": (0.30, 0.20),    # 0.2 worse on both, beyond ±0.0447 and ±0.0707: dominated
          "linear-0.6": (0.70, 0.60),    # 0.2 better on both: promoted
          "linear-0.7": (0.68, 0.58)}    # 0.02 worse on both, within the stderr: not dominated, promoted


@pytest.fixture
def scored_by_table(monkeypatch):
    """lm-eval's scoring replaced by :data:`SCORES` (the candidate being evaluated names the row)."""
    from medmerge.evaluation.objectives import IF_METRICS
    from medmerge.evaluation.report import MetricValue, TaskResult
    from medmerge.evaluation.runner import ModelEvaluator

    def run(self, specs, num_fewshot, model_path=None):
        medical, follow = SCORES[self._evaluating]
        out = {}
        for s in specs:
            metrics = ({m: MetricValue(value=follow, stderr=IF_SE) for m in IF_METRICS} if s.name == "mm_ifeval"
                       else {"acc": MetricValue(value=medical, stderr=TASK_SE)})
            out[s.name] = TaskResult(task=s.name, metrics=metrics, n_samples=4, num_fewshot=num_fewshot,
                                     config_hash=s.config_hash)
        return out

    monkeypatch.setattr(ModelEvaluator, "run", run)


def artifact_json(uri: str, run_id: str, path: str) -> dict:
    with urllib.request.urlopen(f"{uri}/get-artifact?" + urllib.parse.urlencode(
            {"path": path, "run_uuid": run_id}), timeout=30) as r:
        return json.loads(r.read())


def test_a_second_search_against_the_staged_version(demo_models, mlflow_server, scored_by_table, tmp_path):
    from factory import DEMO_EVAL

    from pipelines.merge_search import run

    uri, model = mlflow_server.uri, "promotion-e2e"

    def search(candidate: str) -> dict:
        """merge_search on the demo models whose one candidate is ``candidate`` (linear at its ratio),
        promote: that candidate; returns what the pipeline returned, plus the parent run and its decision
        as the server has them."""
        ratio = float(candidate.rsplit("-", 1)[1])
        sweep = tmp_path / f"{candidate}.yml"
        sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                         "instruct": str(demo_models["instruct"]),
                                         "methods": ["linear"], "ratios": [ratio]}))
        cfg = tmp_path / f"{candidate}.yaml"
        cfg.write_text(yaml.safe_dump({"parameters": {"config": {
            "sweep": str(sweep), **DEMO_EVAL, "output_dir": str(tmp_path / "selected" / candidate),
            "registered_model": model, "experiment": "promotion-e2e", "tracking_uri": uri,
            "promote": [candidate]}}}))
        out = run(str(cfg))
        pid = out["results"].parent_run_id
        parent = api(uri, "runs/get", run_id=pid)["run"]
        out["tags"] = {t["key"]: t["value"] for t in parent["data"]["tags"]}
        out["status"] = parent["info"]["status"]
        out["logged"] = artifact_json(uri, pid, "promotion.json")
        return out

    def staging() -> str:
        return api(uri, "registered-models/alias", name=model, alias="staging")["model_version"]["version"]

    def version(v: str) -> dict:
        mv = api(uri, "model-versions/get", name=model, version=v)["model_version"]
        return {**mv, "tags": {t["key"]: t["value"] for t in mv.get("tags", [])}}

    def run_metrics(run_id: str) -> dict:
        return {m["key"]: m["value"] for m in api(uri, "runs/get", run_id=run_id)["run"]["data"]["metrics"]}

    # 1. nothing staged: the first search's candidate is promoted
    first = search("linear-0.3")
    v1 = first["versions"]["linear-0.3"]
    assert first["promotion"].promoted and "nothing staged yet" in first["promotion"].reason
    assert staging() == v1 and version(v1)["current_stage"] == "Staging"
    staged_run = version(v1)["run_id"]   # the staged version's run: what the next decisions read

    # 2. worse beyond the combined stderr on both objectives: refused, nothing staged moves
    worse = search("linear-0.4")
    v2 = worse["versions"]["linear-0.4"]
    decision = worse["logged"]
    assert decision["promoted"] is False and decision["candidate"] == "linear-0.4"
    assert (decision["version"], decision["staged_version"]) == (v2, v1)
    assert decision["reason"].startswith(f"against v{v1}: dominated by the staged version: worse on ")
    assert "medical_avg 0.3000 vs 0.5000 (±0.0447)" in decision["reason"]
    assert "if_score 0.2000 vs 0.4000 (±0.0707)" in decision["reason"]
    # the staged side's scores and stderrs are those its run recorded
    recorded = run_metrics(staged_run)
    for obj in ("medical_avg", "if_score"):
        assert decision["scores"]["staged"][obj] == {"value": recorded[obj], "stderr": recorded[f"{obj}_stderr"]}
    assert decision["scores"]["staged"]["medical_avg"]["stderr"] == pytest.approx(TASK_SE / 10 ** 0.5)
    assert worse["tags"]["promotion.decision"] == "not promoted" and worse["status"] == "FINISHED"
    assert worse["tags"]["promotion.reason"] == decision["reason"]
    assert staging() == v1 and version(v1)["current_stage"] == "Staging"
    assert version(v2)["current_stage"] == "None" and "promotion_reason" not in version(v2)["tags"]
    assert api(uri, "registered-models/alias", name=model, alias="pick-linear")["model_version"]["version"] == v2

    # 3. better on both: promoted; the version it replaces is archived
    better = search("linear-0.6")
    v3 = better["versions"]["linear-0.6"]
    decision = better["logged"]
    assert decision["promoted"] is True and (decision["version"], decision["staged_version"]) == (v3, v1)
    assert "better on " in decision["reason"] and "worse on" not in decision["reason"]
    assert "medical_avg 0.7000 vs 0.5000 (±0.0447)" in decision["reason"]
    assert better["tags"]["promotion.decision"] == "promoted"
    assert staging() == v3 and version(v3)["current_stage"] == "Staging"
    assert version(v1)["current_stage"] == "Archived"
    assert f"replaces v{v1}" in version(v3)["tags"]["promotion_reason"]
    assert "now archived" in version(v3)["tags"]["promotion_reason"]
    assert version(v2)["current_stage"] == "None"

    # 4. 0.02 worse on both, within the combined stderr: worse nowhere beyond it, so promoted (README)
    within = search("linear-0.7")
    v4 = within["versions"]["linear-0.7"]
    decision = within["logged"]
    assert decision["promoted"] is True and (decision["version"], decision["staged_version"]) == (v4, v3)
    assert decision["reason"].startswith(f"against v{v3}: not dominated by the staged version: within the stderr on ")
    assert "medical_avg 0.6800 vs 0.7000 (±0.0447)" in decision["reason"]
    assert "if_score 0.5800 vs 0.6000 (±0.0707)" in decision["reason"]
    assert decision["scores"]["staged"]["medical_avg"]["value"] == pytest.approx(0.70)   # read from v3's run
    assert within["tags"]["promotion.decision"] == "promoted"
    assert staging() == v4 and version(v4)["current_stage"] == "Staging"
    assert version(v3)["current_stage"] == "Archived" and version(v1)["current_stage"] == "Archived"
    assert len({v1, v2, v3, v4}) == 4
