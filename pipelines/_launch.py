"""The entry points' common part: the preflight, running a pipeline, and every error as one line.

Before ZenML is imported, :func:`medmerge.preflight.check_run_configs` checks the whole run configuration
(each problem one line, exit 2, nothing run or written). Then the pipeline runs. ZenML's local
orchestrator reports a failed step as ``RuntimeError("Pipeline run ... failed")``; the step's own exception
survives only in the step run's ``exception_info``. :func:`launch` puts it back in front of the user as
:class:`StepFailed`: ``step X failed: <message>`` for a medmerge error (say a
:class:`~medmerge.generation.validation.DataValidationError` naming each failed expectation), ``step X
failed: <ExcType>: <message>`` for any other exception, one line either way, exit 2. The traceback stays
in ZenML's record of the step run and is printed with ``--debug`` (or ``MEDMERGE_DEBUG=1``); without it,
ZenML's own printout of the traceback is left out of the console.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from medmerge.errors import MedmergeError
from medmerge.preflight import PreflightError, RunConfigError, one_line  # noqa: F401  (RunConfigError: re-exported)

DEBUG_HINT = "run with --debug or MEDMERGE_DEBUG=1 for the traceback"


class StepFailed(MedmergeError):
    """A pipeline step failed; the message is one line naming the step and its error, ``traceback`` the
    step's (from ZenML's record of the step run)."""

    def __init__(self, message: str, traceback: str | None = None):
        super().__init__(message)
        self.traceback = traceback


def debug_requested(args=None) -> bool:
    """``--debug`` was given or ``MEDMERGE_DEBUG`` is set (1, true, yes, on)."""
    return bool(getattr(args, "debug", False)) or \
        os.environ.get("MEDMERGE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def entry_point(prog: str, doc: str, argv, arguments, call) -> int:
    """The ``main`` of a ``python -m pipelines.<name>`` entry point: parse ``argv`` with the options that
    ``arguments(parser)`` adds (and ``--debug``), ``call(args)``, and turn every error into lines
    ``<prog>: error: ...`` on stderr: the preflight's problems one line each and a medmerge error (a failed
    step included) one line, exit 2; any other exception one line with its type, exit 1; an interrupt,
    exit 130. ``--debug`` (or ``MEDMERGE_DEBUG=1``) adds the traceback. Exit 0 otherwise."""
    import argparse
    import traceback

    from pydantic import ValidationError

    ap = argparse.ArgumentParser(prog=None if prog == "medmerge" else f"python -m pipelines.{prog}",
                                 description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments(ap)
    ap.add_argument("--debug", action="store_true",
                    help="show the Python traceback of an error (for bug reports); or set MEDMERGE_DEBUG=1")
    args = ap.parse_args(argv)
    debug = debug_requested(args)

    def fail(lines, code: int, trace: str | None = None) -> int:
        if debug:
            if trace:
                print(trace.rstrip(), file=sys.stderr)
            else:
                traceback.print_exc()
        for line in lines:
            print(f"{prog}: error: {line}", file=sys.stderr)
        return code

    try:
        call(args)
    except PreflightError as exc:
        return fail(exc.problems, 2)
    except StepFailed as exc:
        return fail([one_line(exc) + ("" if debug else f" ({DEBUG_HINT})")], 2, exc.traceback)
    except MedmergeError as exc:
        return fail([one_line(exc)], 2)
    except ValidationError as exc:   # a configuration built after the preflight (none should fail here)
        from medmerge.preflight import Problems, pydantic_problems

        problems = Problems("configuration")
        pydantic_problems(exc, None, problems)
        return fail(problems.lines or [one_line(exc)], 2)
    except KeyboardInterrupt:
        return fail(["interrupted"], 130)
    except Exception as exc:  # noqa: BLE001 - the one place every other error becomes one line
        return fail([f"{type(exc).__name__}: {one_line(exc)} (an internal error; {DEBUG_HINT})"], 1)
    return 0


def read_run_config(config_path: str) -> dict:
    """``parameters.config`` of a run-config YAML; errors name the file and what is wrong."""
    from medmerge.preflight import read_run_config as read

    return read(config_path)


def build_time_tracking_uri(explicit: str | None) -> str | None:
    """The tracking server the MLflow steps log to, resolved when the pipeline is built: the config's
    ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the server ``medmerge server start`` runs. The steps
    take it as a parameter, which is part of ZenML's cache key, so a run against another server logs there
    instead of replaying the cached steps of the old one. None when none is known here (a remote step pod
    then reads the one its stack's experiment tracker sets)."""
    from medmerge.tracking.registry import RegistryError, resolve_tracking_uri

    try:
        return resolve_tracking_uri(explicit)
    except RegistryError:
        return None


def run_lock_path(pipeline_name: str, config: dict, tracking_uri: str | None) -> Path:
    """The lock file of one (pipeline, run configuration, tracking server): two runs with the same key would
    resume the same MLflow parent run (it is found again by a key of the config) and mix their nested runs."""
    import hashlib
    import json

    from medmerge.io.hashing import cache_dir

    blob = json.dumps({"config": config, "tracking_uri": tracking_uri}, sort_keys=True, default=str)
    return Path(cache_dir()) / "locks" / f"{pipeline_name}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.lock"


def launch(pipeline, config_path: str):
    """Run ``pipeline`` with the run config at ``config_path``. A second run of the same configuration against
    the same server on this machine waits for the first to finish (then runs from ZenML's cache), instead of
    sharing its MLflow parent run."""
    from medmerge.io.atomic import exclusive_lock

    config = read_run_config(config_path)
    lock = run_lock_path(pipeline.name, config, build_time_tracking_uri(config.get("tracking_uri")))

    def waiting(pid):
        print(f"another {pipeline.name} run of this configuration (pid {pid}) is in progress; "
              f"waiting for it to finish ({lock})", file=sys.stderr, flush=True)

    with exclusive_lock(lock, wait=True, on_wait=waiting):
        from medmerge.tracking.runs import failure_reason
        from steps.failure import close_failed_run, start_run

        start_run()   # what this run touches, and only that, is closed if it fails
        try:
            return _launch_unlocked(pipeline, config_path)
        except BaseException as exc:   # a failed or interrupted run leaves no MLflow run RUNNING, registers nothing
            close_failed_run(failure_reason(f"{pipeline.name} failed", exc))
            raise


class _NoTraceback(logging.Filter):
    """Leaves the traceback out of ZenML's "Step X failed." record (the entry point prints one line instead;
    ``--debug`` prints the traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


ZENML_STEP_FAILURE_LOGGERS = ("zenml.orchestrators.local.local_orchestrator",)


def _launch_unlocked(pipeline, config_path: str):
    from zenml.client import Client

    quiet = None if debug_requested() else _NoTraceback()
    loggers = [logging.getLogger(n) for n in ZENML_STEP_FAILURE_LOGGERS]
    for lg in loggers:
        if quiet is not None:
            lg.addFilter(quiet)
    try:
        return pipeline.with_options(config_path=config_path)()
    except Exception as exc:
        try:
            last = Client().get_pipeline(pipeline.name).last_run
        except Exception:
            raise exc from None
        failed = step_failure(last)
        if failed is None:
            raise
        raise failed from None
    finally:
        for lg in loggers:
            if quiet is not None:
                lg.removeFilter(quiet)


def step_failure(pipeline_run) -> StepFailed | None:
    """The first failed step of ``pipeline_run`` as one line: ``step X failed: <message>`` for a medmerge error,
    ``step X failed: <ExcType>: <message>`` for any other; None when no step failed."""
    from zenml.enums import ExecutionStatus

    for name, s in pipeline_run.steps.items():
        if s.status != ExecutionStatus.FAILED:
            continue
        info = s.exception_info
        if info is None:
            return StepFailed(f"step {name} failed (ZenML recorded no exception)")
        source = info.source or ""
        kind = source.rsplit(".", 1)[-1] or "Exception"
        # a pydantic error's message ends each error with a link to its docs: noise on one line
        message = re.sub(r"\s*For further information visit \S+", "", one_line(info.message or "")).rstrip("; ")
        if source.startswith("medmerge.") and message:
            return StepFailed(f"step {name} failed: {message}", info.traceback)
        return StepFailed(f"step {name} failed: {kind}: {message}" if message else f"step {name} failed: {kind}",
                          info.traceback)
    return None
