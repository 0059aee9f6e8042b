"""How task scores aggregate into a suite's score, with its stderr: lm-eval's own group aggregation.

A suite score (Medical Avg, a suite mean) is the unweighted mean of its tasks' scores
(``lm_eval.api.metrics.aggregate_subtask_metrics`` with ``weight_by_size=False``) and its stderr is
lm-eval's ``unweighted_mean_stderr``: ``sqrt(Σ se_i²) / k`` for k independent tasks (a task without a
stderr contributes 0; none with one: None). IF score is the mean of IFEval's prompt- and instruction-level
strict accuracy; both come from the same prompts and are strongly correlated, so its stderr is the mean of
their stderrs (one missing: the other), not the independent formula.

:mod:`medmerge.evaluation.objectives` names the scores; reports, Pareto, the forgetting gate and MLflow read them
from there (``EvalReport.scores``), computed once.
"""

from __future__ import annotations

IF_METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc")


def mean_of_tasks(values: list[float], stderrs: list[float | None]) -> tuple[float, float | None]:
    """``(unweighted mean, its stderr)`` of k task scores."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, unweighted_mean_stderr

    if not values:
        raise ValueError("a mean of no tasks")
    value = float(aggregate_subtask_metrics(list(values), [1] * len(values), weight_by_size=False))
    known = [s for s in stderrs if s is not None]
    se = float(unweighted_mean_stderr([s or 0.0 for s in stderrs])) if known else None
    return value, se


def if_score_of(prompt: float, inst: float, prompt_se: float | None = None,
                inst_se: float | None = None) -> tuple[float, float | None]:
    """``(IF score, its stderr)`` from IFEval's prompt- and instruction-level strict accuracy."""
    ses = [s for s in (prompt_se, inst_se) if s is not None]
    return (prompt + inst) / 2, (sum(ses) / len(ses) if ses else None)


def medical_avg(accuracies: dict[str, float]) -> float:
    """Unweighted mean of the clinical suite's task accuracies (``{task: acc}``)."""
    if not accuracies:
        raise ValueError("medical_avg of no tasks")
    return mean_of_tasks(list(accuracies.values()), [None] * len(accuracies))[0]


def if_score(ifeval_metrics: dict[str, float]) -> float:
    """Mean of IFEval's prompt-level and instruction-level strict accuracy."""
    return if_score_of(*(ifeval_metrics[m] for m in IF_METRICS))[0]
