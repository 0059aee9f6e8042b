"""Picks and the promotion rule (medmerge.selection.promotion): pure functions, no server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medmerge.selection.promotion import (
    PromotionError,
    Score,
    alias_for,
    check_picks,
    check_policy,
    choose,
    compare,
)


def search(points: dict[str, tuple[str, float]], near: list[str], knee: str):
    cands = [SimpleNamespace(name=n, method=m, ratio=float(n.rsplit("-", 1)[1]),
                             report=SimpleNamespace(scores={"medical_avg": SimpleNamespace(value=med)}))
             for n, (m, med) in points.items()]
    results = SimpleNamespace(candidates=cands, by_name=lambda: {c.name: c for c in cands})
    return results, SimpleNamespace(near=near, knee=knee)


POINTS = {"linear-0.0": ("linear", 0.60), "linear-0.3": ("linear", 0.40), "linear-0.5": ("linear", 0.45), "linear-0.8": ("linear", 0.35),
          "slerp-0.4": ("slerp", 0.44), "slerp-0.6": ("slerp", 0.41), "ties-0.5": ("ties", 0.50)}
NEAR = ["linear-0.0", "linear-0.3", "linear-0.5", "linear-0.8", "slerp-0.4", "slerp-0.6"]   # ties-0.5: off it


def test_best_per_method_is_the_best_medical_avg_of_each_method_near_the_frontier():
    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    picks = choose("best_per_method", "none", frontier, results)
    # linear-0.0 (the clinical parent itself) is no merge; ties has no merge near the frontier: its best overall
    assert picks.picks == {"pick-linear": "linear-0.5", "pick-slerp": "slerp-0.4", "pick-ties": "ties-0.5"}
    assert picks.promote_candidate is None


def test_picks_follow_the_selections_y_objective():
    """With other objectives (here y = a task's accuracy), best_per_method and best_medical take the best on y,
    read from each candidate's report: not Medical Avg, which these candidates hold the other way round."""
    from medmerge.evaluation.report import MetricValue, TaskResult

    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    for c in results.candidates:   # the task's accuracy is 1 - the Medical Avg this helper gives
        acc = 1 - c.report.scores["medical_avg"].value
        c.report.tasks = {"mm_hellaswag": TaskResult(task="mm_hellaswag", metrics={"acc": MetricValue(value=acc)},
                                                     n_samples=10, num_fewshot=0, config_hash="")}
        c.report.model = c.name
    frontier.selection = SimpleNamespace(objectives={"x": "if_score", "y": "mm_hellaswag.acc"})
    picks = choose("best_per_method", "best_medical", frontier, results)
    assert picks.picks == {"pick-linear": "linear-0.8", "pick-slerp": "slerp-0.6", "pick-ties": "ties-0.5"}
    assert picks.promote_candidate == "linear-0.8"      # the lowest Medical Avg: the best on y


def test_other_picks_and_policies():
    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    assert choose("knee", "knee", frontier, results).picks == {"pick-linear": "linear-0.8"}
    near = choose("near_frontier", "none", frontier, results).picks
    assert near["pick-linear-0_3"] == "linear-0.3" and len(near) == 6      # several per method: named by candidate
    named = choose(("ties-0.5", "slerp-0.6"), "best_medical", frontier, results)
    assert named.picks == {"pick-ties": "ties-0.5", "pick-slerp": "slerp-0.6"}
    assert named.promote_candidate == "linear-0.0"                         # the best Medical Avg of all
    assert choose("knee", ("linear-0.3", "slerp-0.4"), frontier, results).promote_candidate == "slerp-0.4"
    assert choose("knee", "knee", frontier, results).promote_candidate == "linear-0.8"
    assert alias_for("linear-0.5") == "pick-linear-0_5"


def test_names_that_are_no_candidate_and_unknown_policies_are_refused():
    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    with pytest.raises(PromotionError, match="picks: 'slerp-0.9' names no candidate"):
        choose(("slerp-0.9",), "none", frontier, results)
    with pytest.raises(PromotionError, match="promote: 'x' names no candidate"):
        choose("knee", ("x",), frontier, results)
    with pytest.raises(PromotionError, match="promote: unknown policy 'best'"):
        check_policy("best")
    with pytest.raises(PromotionError, match="picks: unknown policy 'best_of_all'"):
        check_picks("best_of_all")
    assert check_policy(["linear-0.5"]) == ("linear-0.5",) and check_picks("knee") == "knee"


def test_dominated_only_beyond_the_combined_stderr():
    staged = {"medical_avg": Score(value=0.50, stderr=0.03), "if_score": Score(value=0.30, stderr=0.04)}
    # worse on both, by more than sqrt(se_c^2 + se_s^2): dominated
    dominated, why = compare({"medical_avg": Score(value=0.40, stderr=0.03),
                              "if_score": Score(value=0.20, stderr=0.03)}, staged)
    assert dominated and "worse on medical_avg 0.4000 vs 0.5000 (±0.0424)" in why
    # worse on Medical Avg, better on IF score: a trade-off, not dominated
    dominated, why = compare({"medical_avg": Score(value=0.40, stderr=0.03),
                              "if_score": Score(value=0.45, stderr=0.03)}, staged)
    assert not dominated and "better on if_score" in why and "worse on medical_avg" in why
    # worse, but within the stderr: not dominated
    dominated, why = compare({"medical_avg": Score(value=0.47, stderr=0.03),
                              "if_score": Score(value=0.28, stderr=0.03)}, staged)
    assert not dominated and "within the stderr" in why
    # without stderrs any drop counts
    assert compare({"medical_avg": Score(value=0.49)}, {"medical_avg": Score(value=0.50)})[0]


@pytest.mark.parametrize("promote, says", [
    ("best", "promote: unknown policy 'best'"),
    (["clinical-99"], "promote: 'clinical-99' names no fine-tuned model of this run"),
    (["clinical-0"], "names no fine-tuned model"),          # shots 0 trains nothing: nothing to promote
])
def test_finetune_policy_is_checked_before_anything_runs(tmp_path, capsys, promote, says):
    import yaml
    from factory import llama_config, llama_state_dict, write_checkpoint

    from pipelines.finetune import main

    clinical = write_checkpoint(tmp_path / "clinical", llama_state_dict(llama_config(), 0), llama_config())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {
        "initialisations": [{"name": "clinical", "path": str(clinical)}], "data_dir": "sample",
        "shots": [0, 8], "promote": promote, "output_dir": str(tmp_path / "out")}}}))
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finetune: error:") and says in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_task_without_the_held_out_split_is_named():
    from medmerge.errors import MedmergeError
    from medmerge.finetune import FinetuneConfig, load_data

    cfg = FinetuneConfig.model_validate({"initialisations": [{"name": "c", "path": "/nonexistent"}],
                                         "data_dir": "sample", "eval_split": "validation"})
    with pytest.raises(MedmergeError, match="validation"):
        load_data(cfg)


# ---------------------------------------------------------------------------------------------
# the promote steps against a staged version, on a real (sqlite) MLflow store
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("promotion", artifact_location=str(tmp / "artifacts"))
    return uri


def _report(name: str, **accs: tuple[float, float]):
    """An evaluation report with task accuracies ``task=(value, stderr)``."""
    from medmerge.evaluation.report import EvalReport, MetricValue, TaskResult

    return EvalReport(model=name, model_fingerprint=name, suites=["clinical"], lm_eval_version="0",
                      medmerge_version="0", seconds=0.0, tasks={
                          t: TaskResult(task=t, metrics={"acc": MetricValue(value=v, stderr=se)}, n_samples=100,
                                        num_fewshot=0, config_hash="") for t, (v, se) in accs.items()})


def _register(uri: str, model: str, run) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    c = MlflowClient(uri, registry_uri=uri)
    try:
        c.create_registered_model(model)
    except MlflowException:
        pass   # exists
    return str(c.create_model_version(model, source=f"runs:/{run.run_id}/model", run_id=run.run_id).version)


def _search(uri: str, model: str, name: str, report, log_report=True):
    """One search that evaluated ``name`` and registered it: (its parent run, results, versions)."""
    from medmerge.tracking import runs

    parent = runs.create(uri, "promotion", f"search-{name}")
    cand = parent.nested(name, {"candidate": name})
    if log_report:
        cand.json(report.model_dump(mode="json"), "report.json")
    cand.finish()
    c = SimpleNamespace(name=name, report=report)
    results = SimpleNamespace(tracking_uri=uri, parent_run_id=parent.run_id, experiment_id=parent.experiment_id,
                              candidates=[c], by_name=lambda: {name: c}, parent_run=lambda: parent)
    return parent, results, {name: _register(uri, model, cand)}


OBJECTIVES = ("mm_pubmedqa", "mm_medqa_4options")


def _promote_search(uri, model, name, report, **kw):
    from medmerge.evaluation.objectives import resolve
    from medmerge.selection.promotion import Picks, promote_search

    parent, results, versions = _search(uri, model, name, report, **kw)
    cfg = SimpleNamespace(registered_model=model, objective_pair=lambda: tuple(resolve(o) for o in OBJECTIVES))
    picks = Picks(policy="knee", picks={"pick-linear": name}, promote_policy="knee", promote_candidate=name)
    frontier = SimpleNamespace(frontier=[name], near=[name], knee=name, hypervolume=None)
    return parent, versions[name], promote_search(cfg, results, frontier, picks, versions)


STAGED = {"mm_pubmedqa": (0.50, 0.03), "mm_medqa_4options": (0.30, 0.04)}


@pytest.mark.parametrize("candidate, promoted, says", [
    # worse on both beyond sqrt(se_c^2 + se_s^2): dominated, refused
    ({"mm_pubmedqa": (0.40, 0.03), "mm_medqa_4options": (0.20, 0.03)}, False,
     "dominated by the staged version: worse on mm_pubmedqa 0.4000 vs 0.5000 (±0.0424)"),
    # better on both: promoted, the old version archived
    ({"mm_pubmedqa": (0.60, 0.03), "mm_medqa_4options": (0.40, 0.03)}, True, "better on mm_pubmedqa"),
    # worse, but within the combined stderr on both: not dominated, so promoted (the README's rule)
    ({"mm_pubmedqa": (0.47, 0.03), "mm_medqa_4options": (0.28, 0.03)}, True,
     "within the stderr on mm_pubmedqa 0.4700 vs 0.5000 (±0.0424)"),
])
def test_promote_search_against_the_staged_version(uri, candidate, promoted, says):
    from mlflow import MlflowClient

    from medmerge.tracking import registry, runs

    model = f"search-{len(says)}-{promoted}"
    _, _, versions = _search(uri, model, "linear-0.5", _report("staged", **STAGED))
    old = versions["linear-0.5"]
    registry.promote(model, old, uri)
    parent, new, decision = _promote_search(uri, model, "linear-0.7", _report("cand", **candidate))

    c = MlflowClient(uri, registry_uri=uri)
    assert decision.promoted is promoted and says in decision.reason and decision.staged_version == old
    assert decision.scores["staged"]["mm_medqa_4options"].stderr == 0.04      # the staged side's stderr, read
    assert str(c.get_model_version_by_alias(model, "staging").version) == (new if promoted else old)
    assert str(c.get_model_version_by_alias(model, "pick-linear").version) == new
    assert c.get_model_version(model, old).current_stage == ("Archived" if promoted else "Staging")
    got = runs.get(uri, parent.run_id)
    assert got.status == "FINISHED"                                            # the last step closes the parent
    assert got.tags["promotion.decision"] == ("promoted" if promoted else "not promoted")
    assert got.metrics["promotion.staged.mm_pubmedqa_stderr"] == 0.03
    logged = runs.load_text(uri, parent.run_id, "promotion.json")
    assert f'"staged_version": "{old}"' in logged.replace(" ", "").replace('":"', '": "')


@pytest.mark.parametrize("breakage, says", [
    ("no report", r"its run \w+ has no mm_pubmedqa score"),
    ("bad report", r"report.json of its run \w+: .*(JSON|json)"),
    ("other objectives", r"report.json of its run \w+: objective 'mm_pubmedqa' needs task mm_pubmedqa"),
])
def test_unreadable_staged_scores_are_an_error_naming_the_version(uri, breakage, says):
    from mlflow import MlflowClient

    from medmerge.selection.promotion import PromotionError
    from medmerge.tracking import registry, runs

    model = f"unreadable-{breakage.replace(' ', '-')}"
    staged = _report("staged", **STAGED) if breakage != "other objectives" else _report("staged", mm_medmcqa=(.5, .1))
    _, _, versions = _search(uri, model, "linear-0.5", staged, log_report=breakage == "other objectives")
    if breakage == "bad report":
        runs.Run(uri, MlflowClient(uri).get_model_version(model, "1").run_id).text("{not json", "report.json")
    registry.promote(model, versions["linear-0.5"], uri)

    with pytest.raises(PromotionError, match=rf"cannot read the scores of {model} v1 \(@staging\): {says}"):
        _promote_search(uri, model, "linear-0.7", _report("cand", **STAGED))
    c = MlflowClient(uri, registry_uri=uri)
    assert str(c.get_model_version_by_alias(model, "staging").version) == "1"       # nothing moved
    assert "pick-linear" not in c.get_registered_model(model).aliases          # not even the picks


def test_promote_finetuned_weighs_the_staged_versions_stderr(uri):
    """The staged fine-tuned model's Medical Avg is 0.50 ± 0.05; the candidate's 0.46 ± 0.0095 is worse only
    within the combined stderr, so it is promoted; against a staged stderr of 0.005 it is refused."""
    from mlflow import MlflowClient

    from medmerge.evaluation.objectives import resolve
    from medmerge.finetune import TrackingRun
    from medmerge.selection.promotion import promote_finetuned
    from medmerge.tracking import registry, runs

    clinical = resolve("medical_avg").tasks
    after = _report("after", **{t: (0.46, 0.03) for t in clinical})
    medical, medical_se = resolve("medical_avg").score(after)
    assert (round(medical, 4), round(medical_se, 4)) == (0.46, 0.0095)
    within = "within the stderr on composite 0.3000 vs 0.3000 (±0.0000); medical_avg 0.4600 vs 0.5000 (±0.0509)"
    for staged_se, promoted, says in ((0.05, True, within),
                                      (0.005, False, "worse on medical_avg 0.4600 vs 0.5000 (±0.0107)")):
        model = f"sft-{staged_se}"
        first = runs.create(uri, "promotion", "finetune-1")
        sft = first.nested("clinical-8")
        sft.metrics({"composite": 0.30, "after.medical_avg": 0.50, "after.medical_avg_stderr": staged_se})
        sft.finish()
        registry.promote(model, _register(uri, model, sft), uri)

        parent = runs.create(uri, "promotion", "finetune-2")
        nested = parent.nested("clinical-16")
        nested.finish()
        version = _register(uri, model, nested)
        result = SimpleNamespace(init="clinical", shots="16", scores={"composite": 0.30}, after=after,
                                 forgetting=SimpleNamespace(passed=True, failures=[]))
        decision = promote_finetuned(SimpleNamespace(promote="best_composite", registered_model=model),
                                     TrackingRun(tracking_uri=uri, experiment_id=parent.experiment_id,
                                                 parent_run_id=parent.run_id),
                                     [result], {"clinical-16": version})
        assert decision.scores["staged"]["medical_avg"].stderr == staged_se
        assert decision.scores["staged"]["composite"].value == 0.30
        assert decision.promoted is promoted, decision.reason
        assert says in decision.reason
        staged_now = str(MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(model, "staging").version)
        assert staged_now == (version if promoted else "1")
        assert runs.get(uri, parent.run_id).status == "FINISHED"
