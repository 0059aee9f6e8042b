"""``evaluation: racing`` in merge_search on the demo models: the same selection as full evaluation, per-range
caching, a rerun after a kill between rounds, the MLflow record, and the configurations racing refuses."""

from __future__ import annotations

import pytest
import yaml
from factory import DEMO_SWEEP
from pydantic import ValidationError

from medmerge.evaluation.runner import ModelEvaluator
from medmerge.selection import search

# 6 documents per task, raced 2, then 4, then all 6 (three rounds)
EVAL = {"suites": ["clinical", "ifeval"], "data_dir": "sample", "limit": 6, "max_gen_toks": 32, "eps": 0.0}
RACING = {"evaluation": "racing", "racing": {"first": 2, "growth": 2.0, "seed": 3}}
ORIGINAL = {name: getattr(ModelEvaluator, name) for name in ("run", "run_documents")}


def config(demo_models, tmp_path, **extra) -> search.SearchConfig:
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                     "instruct": str(demo_models["instruct"]), **DEMO_SWEEP}))
    return search.SearchConfig(sweep=str(sweep), output_dir=str(tmp_path / "out"), **{**EVAL, **extra})


def count_calls(monkeypatch, name: str, fail_after: int | None = None) -> list:
    """Count ModelEvaluator.<name> calls (each: lm-eval run on the resident weights); raise after ``fail_after``."""
    calls: list = []
    original = ORIGINAL[name]

    def wrapped(self, *a, **kw):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("killed between rounds")
        calls.append(a[0])
        return original(self, *a, **kw)

    monkeypatch.setattr(ModelEvaluator, name, wrapped)
    return calls


def selection(cfg, results, tmp_path):
    fr = search.select_frontier(results, cfg, tmp_path / "figures")
    return sorted(fr.near), fr.knee, sorted(fr.frontier)


def test_racing_selects_as_full_evaluation_and_reuses_its_ranges(demo_models, tmp_path, monkeypatch):
    (tmp_path / "figures").mkdir()
    full_cfg, race_cfg = config(demo_models, tmp_path), config(demo_models, tmp_path, **RACING)
    parents = search.check_parents(full_cfg)
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(tmp_path / "full-cache"))
    full = search.evaluate(full_cfg, parents)

    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(tmp_path / "race-cache"))
    ranges = count_calls(monkeypatch, "run_documents")
    raced = search.evaluate(race_cfg, parents)
    # every candidate that reaches the selection has full-suite scores, equal to full evaluation's, task by task
    assert raced.racing is not None and raced.racing["rounds"] == 3
    by = full.by_name()
    for c in raced.candidates:
        assert c.race is not None and c.race["documents"] == c.race["documents_full"] == 11 * 6
        as_full = {t: (r.metrics, r.alias, r.n_samples) for t, r in by[c.name].report.tasks.items()}
        assert {t: (r.metrics, r.alias, r.n_samples) for t, r in c.report.tasks.items()} == as_full
        assert c.report.scores == by[c.name].report.scores
    for c in raced.stopped:   # the demo models are close to chance: few or none stop, each with its reason
        assert c.race is not None and c.race["stopped"] and c.race["documents"] < c.race["documents_full"]
        assert c.name not in selection(race_cfg, raced, tmp_path)[0]
    assert selection(race_cfg, raced, tmp_path) == selection(full_cfg, full, tmp_path)
    # one lm-eval call per running candidate and round, each on that round's new documents of every task
    assert len(ranges) == sum(c.race["stopped_round"] or 3 for c in raced.candidates + raced.stopped)
    assert all(len(r) == 11 for r in ranges) and {len(r["mm_medqa_4options"]) for r in ranges} == {2}

    # a rerun scores nothing: every range comes from the cache
    again = count_calls(monkeypatch, "run_documents")
    rerun = search.evaluate(race_cfg, parents)
    assert again == [] and [c.report.scores for c in rerun.candidates] == [c.report.scores for c in raced.candidates]
    # and a full evaluation after the race reads the survivors' results from the evaluation cache
    full_runs = count_calls(monkeypatch, "run")
    later = search.evaluate(full_cfg, parents)
    survivors = {c.name for c in raced.candidates}
    assert all(set(c.report.cached_tasks) == set(c.report.tasks) for c in later.candidates if c.name in survivors)
    assert len([specs for specs in full_runs if specs]) == sum(2 for c in later.candidates if c.name not in survivors)


@pytest.mark.integration
def test_a_race_killed_between_rounds_resumes_from_its_ranges(demo_models, tmp_path, monkeypatch):
    cfg = config(demo_models, tmp_path, **RACING)
    parents = search.check_parents(cfg)
    candidates = len(cfg.sweep.evaluated_candidates())
    count_calls(monkeypatch, "run_documents", fail_after=candidates)   # round 1 done, killed as round 2 starts
    with pytest.raises(KeyboardInterrupt, match="killed between rounds"):
        search.evaluate(cfg, parents)
    resumed = count_calls(monkeypatch, "run_documents")
    results = search.evaluate(cfg, parents)
    scored = {len(r["mm_pubmedqa"]) for r in resumed}
    assert scored == {2} and len(resumed) == sum((c.race["stopped_round"] or 3) - 1
                                                 for c in results.candidates + results.stopped)   # round 1 not again


def test_a_stopped_candidate_is_logged_with_why_and_never_selected(demo_search, tmp_path):
    """The MLflow record of a race: ``racing.json`` and the racing metrics on the parent run, each candidate's
    documents and reason as tags; a stopped candidate's partial report stays out of the frontier and picks."""
    import mlflow

    from pipelines.merge_search import load_config

    cfg = load_config(str(demo_search["config"])).model_copy(update={"experiment": "race-record"})
    results = demo_search["out"]["results"]
    worst = min(results.candidates, key=lambda c: c.report.score("medical_avg") + c.report.score("if_score"))
    full = 11 * 4
    course = {"documents": 22, "documents_full": full, "per_task": {}, "stopped_round": 1, "stopped": True,
              "dominator": "linear-0.5", "reason": "stopped after round 1 (22 documents): linear-0.5 minus it is ..."}
    kept = [c.model_copy(update={"race": {**course, "documents": full, "stopped": False, "stopped_round": None,
                                          "reason": "evaluated on every document"}, "run_id": ""})
            for c in results.candidates if c.name != worst.name]
    raced = results.model_copy(update={"candidates": kept, "stopped": [worst.model_copy(update={"race": course})],
                                       "racing": {"documents_used": full * len(kept) + 22,
                                                  "documents_full": full * (len(kept) + 1), "candidates": {}},
                                       "parent_run_id": "", "tracking_uri": ""})
    (tmp_path / "f").mkdir()
    assert worst.name not in search.select_frontier(raced, cfg, tmp_path / "f").near
    logged = search.log_search(cfg, raced, tracking_uri=demo_search["uri"])
    client = mlflow.MlflowClient(demo_search["uri"])
    parent = client.get_run(logged.parent_run_id)
    assert parent.data.params["evaluation"] == "full"   # the config's own field; the record says it raced
    assert parent.data.metrics["racing.stopped"] == 1
    assert parent.data.metrics["racing.documents_fraction"] == pytest.approx((full * len(kept) + 22) / (full * (len(kept) + 1)))
    stopped_run = client.get_run(logged.stopped[0].run_id)
    assert stopped_run.data.tags["racing.stopped"] == "true" and stopped_run.data.tags["racing.documents"] == "22"
    assert stopped_run.data.tags["racing.reason"].startswith("stopped after round 1")
    assert {client.get_run(c.run_id).data.tags["racing.stopped"] for c in logged.candidates} == {"false"}
    local = mlflow.artifacts.download_artifacts(run_id=logged.parent_run_id, artifact_path="racing.json",
                                                tracking_uri=demo_search["uri"], dst_path=str(tmp_path / "dl"))
    assert '"documents_used"' in open(local).read()


@pytest.mark.parametrize("extra, message", [
    ({"workers": 2}, "racing runs its rounds in one process; set workers: 1"),
    ({"log_samples": True}, "use evaluation: full to log samples"),
    ({"num_fewshot": 5}, "evaluation: racing is zero-shot only (suite clinical runs 5-shot"),
    ({"suites": ["medical5"], "objectives": ["mm_hellaswag", "medical5"]}, "zero-shot only (suite medical5 runs 5-shot"),
    ({"racing": {"first": 1}}, "racing.first"),
    ({"racing": {"confidence": 1.0}}, "racing.confidence"),
    ({"evaluation": "race"}, "evaluation"),
])
def test_racing_refuses_what_it_cannot_do(demo_models, tmp_path, extra, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config(demo_models, tmp_path, **{**RACING, **extra})


def test_racing_refuses_an_optuna_search(demo_models, tmp_path):
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]), "instruct": str(demo_models["instruct"]),
                                     "search": "optuna", "methods": ["linear"], "budget": 4}))
    with pytest.raises(ValidationError, match="an Optuna search .search: optuna. evaluates each trial in full"):
        search.SearchConfig(sweep=str(sweep), output_dir=str(tmp_path / "o"), **EVAL, **RACING)


def test_the_fan_out_refuses_racing(demo_models, tmp_path):
    from medmerge.selection.race_search import RaceSearchError

    cfg = config(demo_models, tmp_path, **RACING)
    with pytest.raises(RaceSearchError, match="merge_search_parallel fans the evaluation out in full"):
        search.shard_results(cfg, {}, 0, 1)
