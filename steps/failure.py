"""The hooks every step carries, so that a failed run leaves no MLflow run RUNNING and registers nothing.

* ``on_success`` (:func:`claim_registrations`): notes which step run registered the model versions recorded
  since the last step (:func:`medmerge.tracking.runs.claim_versions`).
* ``on_failure`` (:func:`fail_tracked_runs`): every MLflow run this process opened or logged to that is still
  open ends FAILED (tag ``medmerge.failure`` says which step and why), every version registered from a failed
  run is deleted (:func:`medmerge.tracking.failure.fail_touched`), and the cached result of the step that
  registered it is expired, so the rerun registers it again instead of handing on a deleted version. It never
  raises: the step's own error is what the user reads.

:func:`start_run` and :func:`close_failed_run` do the same around a whole run (``pipelines._launch.launch``).
"""

from __future__ import annotations

import logging
from typing import Any

from medmerge.tracking import failure, runs

log = logging.getLogger(__name__)

_registered_by: dict[tuple[str, str, str], Any] = {}   # (uri, model, version) -> the step run that registered it


def start_run() -> None:
    """A new pipeline run in this process: what earlier runs touched is theirs."""
    runs.forget_touched()
    _registered_by.clear()


def claim_registrations() -> None:
    """``on_success``: the versions this step registered belong to its step run."""
    keys = runs.claim_versions()
    if keys:
        from zenml import get_step_context

        step_run = get_step_context().step_run.id
        _registered_by.update(dict.fromkeys(keys, step_run))


def close_failed_run(reason: str) -> failure.FailedRunReport:
    """:func:`medmerge.tracking.failure.fail_touched`, then expire the cached results of the steps that registered
    the deleted versions. Never raises (problems are logged)."""
    report = failure.fail_touched(reason)
    expire = {_registered_by.pop(k) for k in report.deleted if k in _registered_by}
    if expire:
        try:
            from zenml.client import Client
            from zenml.utils.time_utils import utc_now

            for step_run in expire:
                Client().update_step_run(step_run, cache_expires_at=utc_now())
        except Exception as exc:  # noqa: BLE001 - never raise over the step's own error; say so
            report.problems.append(f"expiring the cached registration: {type(exc).__name__}: {exc}")
    if report.failed or report.deleted:
        log.info("MLflow runs marked FAILED: %s; versions deleted: %s", ", ".join(report.failed) or "none",
                 ", ".join(report.deleted_versions) or "none")
    for problem in report.problems:
        log.warning("closing the failed run's MLflow runs: %s", problem)
    return report


def fail_tracked_runs(exception: BaseException) -> None:
    """``on_failure``: close what the run touched (:func:`close_failed_run`)."""
    try:
        from zenml import get_step_context

        where = f"step {get_step_context().step_name} failed"
    except Exception:  # noqa: BLE001 - no step context (called outside a step)
        where = "a step failed"
    close_failed_run(runs.failure_reason(where, exception))
