"""The forgetting gate on hand-made reports."""

from __future__ import annotations

import pytest

from medmerge.evaluation.report import EvalReport, MetricValue, TaskResult
from medmerge.finetune.forgetting import forgetting_gate


def report(ifeval: float, pubmed: float, pubmed_se: float | None, med: float) -> EvalReport:
    tasks = {
        "mm_pubmedqa": TaskResult(task="mm_pubmedqa", metrics={"acc": MetricValue(value=pubmed, stderr=pubmed_se)},
                                  n_samples=100, num_fewshot=0, config_hash="0" * 64),
        "mm_ifeval": TaskResult(task="mm_ifeval", metrics={
            "prompt_level_strict_acc": MetricValue(value=ifeval, stderr=0.0),
            "inst_level_strict_acc": MetricValue(value=ifeval, stderr=0.0)}, n_samples=100, num_fewshot=0,
            config_hash="0" * 64),
    }
    # the suite scores as make_report computes them (here Medical Avg stands on PubMedQA alone: its stderr)
    scores = {"medical_avg": MetricValue(value=med, stderr=pubmed_se), "if_score": MetricValue(value=ifeval, stderr=0.0)}
    return EvalReport(model="m", model_fingerprint="f", suites=["clinical", "ifeval"], tasks=tasks,
                      scores=scores, lm_eval_version="x", medmerge_version="x", seconds=1.0)


def test_drop_within_margin_plus_stderr_passes():
    # pubmed drop 0.05 <= 0.02 + sqrt(0.03^2 + 0.03^2) = 0.0624; medical_avg drop 0.01 <= 0.02 + ...
    gate = forgetting_gate(report(0.50, 0.60, 0.03, 0.40), report(0.50, 0.55, 0.03, 0.39), margin=0.02)
    assert gate.passed and not gate.failures
    pub = next(c for c in gate.changes if c.score == "mm_pubmedqa.acc")
    assert pub.drop == pytest.approx(0.05) and pub.allowed == pytest.approx(0.02 + (2 * 0.03**2) ** 0.5)


def test_ifeval_falling_fails_the_gate():
    # if_score drop 0.30 - 0.10 = 0.20 > 0.02 (IFEval stderrs 0 here): forgotten
    gate = forgetting_gate(report(0.30, 0.60, 0.03, 0.40), report(0.10, 0.62, 0.03, 0.41), margin=0.02)
    assert not gate.passed
    assert {c.score for c in gate.failures} == {"if_score", "mm_ifeval.prompt_level_strict_acc",
                                                "mm_ifeval.inst_level_strict_acc"}
    assert "FORGOT" in gate.table()


def test_improvements_and_missing_stderr():
    gate = forgetting_gate(report(0.3, 0.5, None, 0.4), report(0.4, 0.47, None, 0.45), margin=0.05)
    assert gate.passed
    # a task metric without stderr is shown but not gated (its drop cannot be told from noise) ...
    gate = forgetting_gate(report(0.3, 0.5, None, 0.4), report(0.4, 0.30, None, 0.45), margin=0.05)
    pub = next(c for c in gate.changes if c.score == "mm_pubmedqa.acc")
    assert gate.passed and pub.allowed is None and not pub.failed and "not gated (no stderr)" in gate.table()
    # ... while Medical Avg, built from it, is gated (its stderr from the parts: 0 here, so the margin alone)
    gate = forgetting_gate(report(0.3, 0.5, None, 0.4), report(0.4, 0.30, None, 0.34), margin=0.05)
    assert [c.score for c in gate.failures] == ["medical_avg"]  # drop 0.06 > 0.05


def test_bad_margin():
    with pytest.raises(ValueError, match="margin"):
        forgetting_gate(report(0.3, 0.5, 0.1, 0.4), report(0.3, 0.5, 0.1, 0.4), margin=-0.1)


def test_means_get_their_stderr_from_their_parts():
    """A report without ``scores`` (made before they were stored) gets them from the same definition
    (medmerge.evaluation.objectives.suite_scores): Medical Avg over the ten clinical tasks, IF score from IFEval."""
    from medmerge.evaluation.tasks import load_suites

    clinical = load_suites()["clinical"]["tasks"]
    ses = [0.03, 0.04] + [None] * (len(clinical) - 2)   # two tasks with a stderr, the rest without (count 0)

    def rep(p_se, i_se, value=0.5):
        def task(name, metrics):
            return TaskResult(task=name, metrics=metrics, n_samples=8, num_fewshot=0, config_hash="0" * 64)

        tasks = {t: task(t, {"acc": MetricValue(value=value, stderr=se)}) for t, se in zip(clinical, ses)}
        tasks["mm_ifeval"] = task("mm_ifeval", {"prompt_level_strict_acc": MetricValue(value=value, stderr=p_se),
                                                "inst_level_strict_acc": MetricValue(value=value, stderr=i_se)})
        return EvalReport(model="m", model_fingerprint="f", suites=["clinical", "ifeval"], tasks=tasks,
                          lm_eval_version="x", medmerge_version="x", seconds=1.0)

    gate = forgetting_gate(rep(0.10, None), rep(0.10, 0.06, value=0.45), margin=0.0)
    by = {c.score: c for c in gate.changes}
    med_se = (0.03**2 + 0.04**2) ** 0.5 / len(clinical)                     # lm-eval's unweighted_mean_stderr
    assert by["medical_avg"].allowed == pytest.approx((2 * med_se**2) ** 0.5)
    # before: inst stderr missing -> the prompt-level one: (0.10 + 0.10) / 2; after: (0.10 + 0.06) / 2
    assert by["if_score"].allowed == pytest.approx((0.10**2 + 0.08**2) ** 0.5)
    assert by["if_score"].drop == pytest.approx(0.05) and not by["if_score"].failed
