"""Run a pipeline and turn a failed step back into the error it raised.

ZenML's local orchestrator reports any failed step as ``RuntimeError("Pipeline run ... failed")``;
the step's own exception (say a :class:`~medmerge.generation.validation.DataValidationError`
naming each failed expectation) survives only in the step run's ``exception_info``. This puts
it back in front of the user: a medmerge error becomes a :class:`StepFailed` (a MedmergeError,
so the entry points print one clear message and exit 2); anything else is re-raised as is.
"""

from __future__ import annotations

from medmerge.errors import MedmergeError


class StepFailed(MedmergeError):
    """A pipeline step raised a medmerge error; the message is that step's."""


class RunConfigError(MedmergeError):
    """A ZenML run-config YAML cannot be read or lacks ``parameters.config``."""


def read_run_config(config_path: str) -> dict:
    """``parameters.config`` of a run-config YAML; errors name the file and what is wrong."""
    import yaml

    try:
        with open(config_path) as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError:
        raise RunConfigError(f"{config_path}: no such run configuration") from None
    except yaml.YAMLError as exc:
        raise RunConfigError(f"{config_path}: not valid YAML: {exc}") from None
    params = (doc or {}).get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("config"), dict):
        raise RunConfigError(f"{config_path}: expected a mapping under parameters.config (the pipeline's config)")
    return params["config"]


def launch(pipeline, config_path: str):
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
