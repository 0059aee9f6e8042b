"""Configurable objectives with their stderrs in the selection, the comparison table, and the Optuna study."""

from __future__ import annotations

import math

import pytest

from medmerge.evaluation import objectives
from medmerge.evaluation.report import EvalReport, MetricValue, TaskResult
from medmerge.merge.recipe import SweepSpec
from medmerge.selection import comparison
from medmerge.selection.search import CandidateResult, SearchConfig, SearchResults, _selection

NOWHERE = {"clinical": "/nonexistent/clinical", "instruct": "/nonexistent/instruct", "base": "/nonexistent/base"}
MEDICAL5 = ["mm_medqa_4options", "mm_pubmedqa", "mm_mmlu_professional_medicine", "mm_medmcqa", "mm_hellaswag"]


def report(name: str, accs: dict[str, tuple[float, float | None]]) -> EvalReport:
    tasks = {t: TaskResult(task=t, metrics={"acc": MetricValue(value=v, stderr=se)}, n_samples=100, num_fewshot=5,
                           config_hash="h") for t, (v, se) in accs.items()}
    return EvalReport(model=name, model_fingerprint=name, suites=["medical5"], tasks=tasks, lm_eval_version="t",
                      medmerge_version="t", seconds=0.0)


def uniform(name, value, se, hellaswag=None):
    accs = {t: (value, se) for t in MEDICAL5}
    if hellaswag is not None:
        accs["mm_hellaswag"] = hellaswag
    return report(name, accs)


def results_of(reports: dict[str, tuple[EvalReport, str | None]]) -> SearchResults:
    spec = SweepSpec(**NOWHERE, preset="hierarchical-study-methods")
    recipe = spec.candidates()[0].recipe
    return SearchResults(parents={}, candidates=[
        CandidateResult(name=n, method="linear", recipe=recipe, identity=n, report=r, role=role)
        for n, (r, role) in reports.items()])


def config(**kw) -> SearchConfig:
    return SearchConfig(sweep={**NOWHERE, "preset": "hierarchical-study-methods"}, suites=["medical5"],
                        objectives=["mm_hellaswag", "medical5"], output_dir="/nonexistent/out", **kw)


def test_a_suite_objective_is_the_mean_with_independent_stderrs():
    r = report("m", {"mm_medqa_4options": (0.4, 0.03), "mm_pubmedqa": (0.6, 0.04), "mm_mmlu_professional_medicine":
                     (0.5, 0.0), "mm_medmcqa": (0.3, None), "mm_hellaswag": (0.7, 0.02)})
    value, se = objectives.resolve("medical5").score(r)
    assert value == pytest.approx(0.5) and se == pytest.approx(math.sqrt(0.03**2 + 0.04**2 + 0.02**2) / 5)
    assert objectives.resolve("mm_hellaswag").score(r) == (0.7, 0.02)


def test_suite_scores_are_what_suites_yaml_declares(monkeypatch):
    """``score:`` in tasks/suites.yaml names the score a suite feeds; reports hold it once, with its stderr."""
    from medmerge.evaluation import tasks

    r = uniform("m", 0.5, 0.03).model_copy(update={"suites": ["medical5"]})
    assert objectives.suite_scores(r) == {}            # medical5 declares no score
    real = tasks.load_suites()
    declared = {**real, "medical5": {**real["medical5"], "score": "medical5_avg"}}
    monkeypatch.setattr(tasks, "load_suites", lambda: declared)
    got = objectives.suite_scores(r)
    assert list(got) == ["medical5_avg"] and got["medical5_avg"].value == pytest.approx(0.5)
    assert got["medical5_avg"].stderr == pytest.approx(math.sqrt(5 * 0.03**2) / 5)   # lm-eval's unweighted mean


def test_stderr_reaches_the_selection():
    """B beats A by 0.02 on both axes; A's and B's stderrs (0.05 per task) make that within one combined
    stderr, so with use_stderr A is near the frontier, without it A is not (the bug: it had no effect)."""
    res = results_of({"A": (uniform("A", 0.50, 0.05, hellaswag=(0.50, 0.05)), None),
                      "B": (uniform("B", 0.52, 0.05, hellaswag=(0.52, 0.05)), None)})
    pts, _, plain = _selection(res, config())
    assert [p.name for p in plain.near] == ["B"]
    a = next(p for p in pts if p.name == "A")
    assert a.x == 0.50 and a.x_stderr == 0.05            # x: HellaSwag
    assert a.y_stderr == pytest.approx(math.sqrt(5 * 0.05**2) / 5)   # y: the medical5 mean
    _, _, widened = _selection(res, config(use_stderr=True))
    assert [p.name for p in widened.near] == ["A", "B"]
    assert widened.labels == ("hellaswag", "medical5 mean")


def test_parents_by_role_give_the_hypervolume_reference():
    res = results_of({"clinical": (uniform("c", 0.6, 0.01, hellaswag=(0.3, 0.01)), "clinical"),
                      "instruct": (uniform("i", 0.4, 0.01, hellaswag=(0.5, 0.01)), "instruct"),
                      "mid": (uniform("m", 0.55, 0.01, hellaswag=(0.45, 0.01)), None)})
    _, parents, sel = _selection(res, config())
    # medical5 mean includes HellaSwag: clinical (4*0.6 + 0.3)/5 = 0.54, instruct (4*0.4 + 0.5)/5 = 0.42
    assert parents["clinical"] == pytest.approx((0.3, 0.54)) and parents["instruct"] == pytest.approx((0.5, 0.42))
    assert sel.reference == pytest.approx((0.3, 0.42))
    assert sel.hypervolume > 0 and "mid" in [p.name for p in sel.frontier]


def test_comparison_marks_best_diff_to_better_parent_and_rank(tmp_path):
    rows = [
        {"name": "clinical", "method": "linear", "role": "clinical",
         "report": report("c", {"mm_pubmedqa": (0.6, 0.05), "mm_hellaswag": (0.2, 0.04)})},
        {"name": "instruct", "method": "linear", "role": "instruct",
         "report": report("i", {"mm_pubmedqa": (0.3, 0.05), "mm_hellaswag": (0.4, 0.04)})},
        {"name": "dare_ties", "method": "dare_ties", "params": {"density": 0.6},
         "report": report("d", {"mm_pubmedqa": (0.5, 0.05), "mm_hellaswag": (0.5, None)})},
    ]
    cmp = comparison.build(rows)
    by = {r["name"]: r for r in cmp["rows"]}
    assert [r["name"] for r in cmp["rows"]][:2] == ["clinical", "instruct"]
    assert by["dare_ties"]["mean"] == pytest.approx(0.5) and by["clinical"]["mean"] == pytest.approx(0.4)
    assert by["dare_ties"]["delta_better_parent"] == pytest.approx(0.1)     # better parent mean: 0.4 (clinical)
    assert [by[n]["rank"] for n in ("dare_ties", "clinical", "instruct")] == [1, 2, 3]
    assert by["clinical"]["tasks"]["mm_pubmedqa"]["best"] and not by["dare_ties"]["tasks"]["mm_pubmedqa"]["best"]
    assert by["dare_ties"]["tasks"]["mm_hellaswag"]["best"] and by["dare_ties"]["mean_best"]
    md = comparison.to_markdown(cmp)
    assert "| 1 | dare_ties | dare_ties | density=0.6 | 0.5000 ± 0.0500 | **0.5000** | **0.5000 ± 0.0250** | +0.1000 |" \
        in md
    assert "**0.6000 ± 0.0500**" in md
    files = comparison.write(rows, tmp_path)
    assert files["png"].stat().st_size > 10_000 and files["json"].exists()


# --- Optuna ---------------------------------------------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (the trial stays RUNNING in the storage)."""


def fake_score(cand) -> EvalReport:
    """A trade-off: x rises with the ratio, y falls (slerp bulges out a little)."""
    r = cand.params.get("ratio", 0.0)
    r = sum(r) / len(r) if isinstance(r, list) else r
    bulge = 0.05 if cand.method == "slerp" else 0.0
    return uniform(cand.name, 0.8 - 0.5 * r * r + bulge, 0.01, hellaswag=(0.2 + 0.5 * r + bulge, 0.01))


def optuna_spec(budget=8):
    return SweepSpec(**NOWHERE, search="optuna", budget=budget, seed=3,
                     methods={"linear": {"ratio": {"low": 0.0, "high": 1.0}},
                              "slerp": {"ratio": {"low": 0.0, "high": 1.0, "gradient": 3}}})


def test_optuna_study_resumes_after_a_kill_in_trial_5(tmp_path):
    from optuna.trial import TrialState

    from medmerge.selection import optuna_search

    spec = optuna_spec()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    x, y = objectives.resolve("mm_hellaswag"), objectives.resolve("medical5")
    score = lambda r: (x.score(r)[0], y.score(r)[0])  # noqa: E731
    calls = []

    def dies_in_trial_5(cand):
        calls.append(cand.name)
        if len(calls) == 5:
            raise Killed("killed in trial 5")
        return fake_score(cand)

    with pytest.raises(Killed, match="killed in trial 5"):
        list(optuna_search.run_study(spec, dies_in_trial_5, score, storage=storage, name="s"))
    study = optuna_search.open_study(storage, "s", spec.seed)   # what a restarted process sees
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1
    killed = next(t for t in study.get_trials() if t.state == TrialState.FAIL)

    again = []
    out = list(optuna_search.run_study(spec, lambda c: again.append(c.name) or fake_score(c), score,
                                       storage=storage, name="s"))
    names = [c.name for c, _ in out]
    assert len(names) == 8 == len(set(names))
    done = optuna_search.complete_trials(optuna_search.open_study(storage, "s", spec.seed))
    assert len(done) == 8 and names == [optuna_search.trial_name(t.number, t.params.get("method", "linear"))
                                        for t in done]
    # the interrupted candidate was evaluated again with the same parameters (enqueued), not lost
    assert killed.params in [t.params for t in done if t.number > killed.number]
    # trials finished before the kill are read back, not proposed again
    assert set(names[:4]) == set(calls[:4])
    for cand, rep in out:
        assert rep.model == cand.name


def test_optuna_proposes_gradients_and_stays_in_range(tmp_path):
    from medmerge.selection import optuna_search

    spec = optuna_spec(budget=10)
    out = list(optuna_search.run_study(spec, fake_score, lambda r: (r.tasks["mm_hellaswag"].metrics["acc"].value,
                                                                    r.tasks["mm_pubmedqa"].metrics["acc"].value),
                                       storage=None, name="mem"))
    assert len(out) == 10
    for cand, _ in out:
        r = cand.params["ratio"]
        if cand.method == "slerp":
            assert isinstance(r, list) and len(r) == 3 and all(0 <= v <= 1 for v in r)
            assert cand.recipe.parameters["t"] == r
        else:
            assert 0 <= r <= 1
