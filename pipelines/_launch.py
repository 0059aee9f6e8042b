"""Run a pipeline and turn a failed step back into the error it raised.

ZenML's local orchestrator reports any failed step as ``RuntimeError("Pipeline run ... failed")``;
the step's own exception (say a :class:`~medmerge.generation.validation.DataValidationError`
naming each failed expectation) survives only in the step run's ``exception_info``. This puts
it back in front of the user: a medmerge error becomes a :class:`StepFailed` (a MedmergeError,
so the entry points print one clear message and exit 2); anything else is re-raised as is.
"""

from __future__ import annotations

import sys

from medmerge.errors import MedmergeError


class StepFailed(MedmergeError):
    """A pipeline step raised a medmerge error; the message is that step's."""


class RunConfigError(MedmergeError):
    """A ZenML run-config YAML cannot be read or lacks ``parameters.config``."""


def entry_point(prog: str, doc: str, argv, arguments, call) -> int:
    """The ``main`` of a ``python -m pipelines.<name>`` entry point: parse ``argv`` with the options that
    ``arguments(parser)`` adds, ``call(args)``, and turn a medmerge or pydantic error into one line
    ``<prog>: error: ...`` on stderr and exit 2. Exit 0 otherwise."""
    import argparse

    from pydantic import ValidationError

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments(ap)
    args = ap.parse_args(argv)
    try:
        call(args)
    except (MedmergeError, ValidationError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def read_run_config(config_path: str) -> dict:
    """``parameters.config`` of a run-config YAML; errors name the file and what is wrong."""
    from medmerge.io.yaml_file import read_yaml

    doc = read_yaml(config_path, RunConfigError, "run configuration")
    params = (doc or {}).get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("config"), dict):
        raise RunConfigError(f"{config_path}: expected a mapping under parameters.config (the pipeline's config)")
    return params["config"]


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


def run_lock_path(pipeline_name: str, config: dict, tracking_uri: str | None) -> "Path":
    """The lock file of one (pipeline, run configuration, tracking server): two runs with the same key would
    resume the same MLflow parent run (it is found again by a key of the config) and mix their nested runs."""
    import hashlib
    import json
    from pathlib import Path

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
        from medmerge.tracking import runs

        runs.forget_touched()   # what this run touches, and only that, is closed if it fails
        try:
            return _launch_unlocked(pipeline, config_path)
        except BaseException as exc:   # a failed or interrupted run leaves no MLflow run RUNNING, registers nothing
            runs.fail_touched(runs.failure_reason(f"{pipeline.name} failed", exc))
            raise


def _launch_unlocked(pipeline, config_path: str):
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    try:
        return pipeline.with_options(config_path=config_path)()
    except RuntimeError:
        try:
            last = Client().get_pipeline(pipeline.name).last_run
        except Exception:
            raise
        failed = [(name, s) for name, s in last.steps.items() if s.status == ExecutionStatus.FAILED]
        for name, s in failed:
            info = s.exception_info
            if info is not None and (info.source or "").startswith("medmerge.") and info.message:
                raise StepFailed(f"step {name} failed: {info.message}") from None
        raise
