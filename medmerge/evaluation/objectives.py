"""The two objectives of a Pareto selection, read from an evaluation report, each with its stderr.

An objective is named by a string, checked when the run configuration is parsed:

* ``medical_avg`` — Medical Avg, the unweighted mean accuracy of the ``clinical`` suite;
* ``if_score`` — IF score, the mean of IFEval's prompt- and instruction-level strict accuracy;
* a suite name (``medical5``) — the unweighted mean of its tasks' accuracies;
* a task name (``mm_hellaswag``) — its ``acc`` (or its first metric), or ``task.metric``.

Values and stderrs aggregate as :mod:`medmerge.evaluation.scores` says (lm-eval's group aggregation for a
mean of tasks; the mean of the two stderrs for IF score). :func:`suite_scores` computes, once per report,
the score each evaluated suite declares under ``score:`` in ``tasks/suites.yaml``: reports, Pareto, the
forgetting gate and MLflow read ``EvalReport.scores``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from medmerge.errors import MedmergeError
from medmerge.evaluation.scores import IF_METRICS, if_score_of, mean_of_tasks

LABELS = {"medical_avg": "Medical Avg", "if_score": "IF score"}
DEFAULT_OBJECTIVES = ("if_score", "medical_avg")    # (x, y): IF score across, Medical Avg up


class ObjectiveError(MedmergeError):
    """An objective that names no score, or one the configured suites do not evaluate."""


@dataclass(frozen=True)
class Objective:
    name: str
    label: str
    tasks: tuple[str, ...]          # the tasks it reads
    metric: str | None = None       # for a single task: its metric (None: acc, else the first)
    kind: str = "mean"              # "mean" of the tasks' accuracies, "if_score", or "task"

    def score(self, report) -> tuple[float, float | None]:
        """``(value, stderr)`` from an :class:`~medmerge.evaluation.report.EvalReport`."""
        missing = [t for t in self.tasks if t not in report.tasks]
        if missing:
            raise ObjectiveError(f"objective {self.name!r} needs task {missing[0]}, which {report.model} lacks")
        if self.kind == "if_score":
            p, i = (report.tasks[self.tasks[0]].metrics[m] for m in IF_METRICS)
            return if_score_of(p.value, i.value, p.stderr, i.stderr)
        if self.kind == "task":
            v = report.tasks[self.tasks[0]].metrics[primary_metric(report.tasks[self.tasks[0]], self.metric)]
            return v.value, v.stderr
        vals = [report.tasks[t].metrics[primary_metric(report.tasks[t])] for t in self.tasks]
        return mean_of_tasks([v.value for v in vals], [v.stderr for v in vals])


def suite_scores(report) -> dict:
    """``{score: MetricValue(value, stderr)}`` for every suite of ``report`` that declares a ``score:`` in
    ``tasks/suites.yaml`` (clinical: medical_avg, ifeval: if_score) and whose tasks and metrics it holds."""
    from medmerge.evaluation.report import MetricValue
    from medmerge.evaluation.tasks import load_suites

    suites = load_suites()
    out = {}
    for suite in report.suites:
        name = suites.get(suite, {}).get("score")
        if not name:
            continue
        try:
            value, se = resolve(name).score(report)
        except (ObjectiveError, KeyError):   # the report lacks a task or metric the score is made of
            continue
        out[name] = MetricValue(value=value, stderr=se)
    return out


def primary_metric(task_result, metric: str | None = None) -> str:
    """The metric a task is scored by: ``metric`` if given, else ``acc``, else IFEval's prompt-level
    strict accuracy, else the first one reported."""
    metrics = task_result.metrics
    if metric is not None:
        if metric not in metrics:
            raise ObjectiveError(f"task {task_result.task} has no metric {metric!r} (it has: {', '.join(metrics)})")
        return metric
    for m in ("acc", IF_METRICS[0]):
        if m in metrics:
            return m
    return next(iter(metrics))


def resolve(name: str) -> Objective:
    """The objective ``name`` names (see the module docstring); ObjectiveError when it names nothing."""
    from medmerge.evaluation.tasks import available_tasks, load_suites

    suites = load_suites()
    declared = {spec["score"]: suite for suite, spec in suites.items() if spec.get("score")}   # suites.yaml score:
    if name in declared:
        tasks = tuple(suites[declared[name]]["tasks"])
        if name == "if_score":   # IFEval's two strict accuracies (see evaluation.scores)
            return Objective(name, LABELS[name], tasks, kind="if_score")
        return Objective(name, LABELS.get(name, name), tasks)
    if name in suites:
        return Objective(name, f"{name} mean", tuple(suites[name]["tasks"]))
    task, _, metric = name.partition(".")
    if task in available_tasks():
        return Objective(name, name.removeprefix("mm_"), (task,), metric=metric or None, kind="task")
    raise ObjectiveError(f"unknown objective {name!r}: use medical_avg, if_score, a suite "
                         f"({', '.join(suites)}) or a task ({', '.join(available_tasks())}), optionally task.metric")


def resolve_pair(names, suites) -> tuple[Objective, Objective]:
    """Two distinct objectives whose tasks the configured ``suites`` evaluate."""
    from medmerge.evaluation.tasks import suite_tasks

    names = tuple(names)
    if len(names) != 2:
        raise ObjectiveError(f"objectives: give exactly two (x, y); got {len(names)}")
    if names[0] == names[1]:
        raise ObjectiveError(f"objectives: {names[0]!r} twice; give two different scores")
    evaluated = {t for ts in suite_tasks(list(suites)).values() for t in ts}
    out = []
    for n in names:
        obj = resolve(n)
        missing = [t for t in obj.tasks if t not in evaluated]
        if missing:
            raise ObjectiveError(f"objective {n!r} needs task {missing[0]}, which the suites "
                                 f"({', '.join(suites)}) do not evaluate")
        out.append(obj)
    return out[0], out[1]


def values_of(objectives: Sequence[Objective]) -> Callable[[Any], tuple[float, ...]]:
    """``report -> (value, ...)``: a report's values on ``objectives`` (what an Optuna study maximises), in
    their order, without the stderrs."""
    return lambda report: tuple(o.score(report)[0] for o in objectives)
