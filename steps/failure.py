"""The failure hook every step carries: a failed step closes the MLflow runs its pipeline run touched.

In: the step's exception. Out: nothing; every run this process opened or logged to that is still open
ends FAILED (tag ``medmerge.failure`` says which step and why), and every model version registered from
a failed run is deleted (:func:`medmerge.tracking.runs.fail_touched`). It never raises: the step's own
error is what the user reads.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def fail_tracked_runs(exception: BaseException) -> None:
    from medmerge.tracking import runs

    try:
        from zenml import get_step_context

        where = f"step {get_step_context().step_name} failed"
    except Exception:   # no step context (called outside a step)
        where = "a step failed"
    report = runs.fail_touched(runs.failure_reason(where, exception))
    if report.failed or report.deleted_versions:
        log.info("MLflow runs marked FAILED: %s; versions deleted: %s", ", ".join(report.failed) or "none",
                 ", ".join(report.deleted_versions) or "none")
    for problem in report.problems:
        log.warning("closing the failed run's MLflow runs: %s", problem)
