"""Medical Avg and IF score: computed here and nowhere else."""

from __future__ import annotations

from statistics import mean

IF_METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc")


def medical_avg(accuracies: dict[str, float]) -> float:
    """Unweighted mean of the clinical suite's task accuracies (``{task: acc}``)."""
    if not accuracies:
        raise ValueError("medical_avg of no tasks")
    return mean(accuracies.values())


def if_score(ifeval_metrics: dict[str, float]) -> float:
    """Mean of IFEval's prompt-level and instruction-level strict accuracy."""
    return mean(ifeval_metrics[m] for m in IF_METRICS)
