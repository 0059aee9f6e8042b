"""MLflow run logging, model registration and promotion (the core; steps call these).

* One parent run per sweep evaluation, one nested run per candidate: the recipe as params,
  every per-task score as metrics (plus Medical Avg, IF score, seconds), the report as an artifact.
* A selected checkpoint is logged as an MLflow Model of its candidate run (transformers flavor, see
  :mod:`medmerge.tracking.models`) and that model registered as a version of one registered model,
  tagged with its recipe, the parents' hashes, Medical Avg, IF score and the run id, described by its
  model card. A version with the same candidate identity is reused, never duplicated.
* Promotion sets the alias (``models:/NAME@staging`` resolves to it), moves the version to the
  Staging stage (archiving the previous one) and says why; it refuses a version that does not
  exist or whose run did not finish.
* A tracking server that stops answering fails the call within seconds (MLflow's HTTP retries are
  bounded unless the user set them) with a :class:`RegistryError` naming the tracking URI.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmerge.errors import MedmergeError
from medmerge.tracking.connection import (  # noqa: F401  (also the registry's names)
    RegistryError,
    check_reachable,
    client,
    resolve_tracking_uri,
    unreachable_as_error,
)

REPORT_ARTIFACT = "report.json"   # a candidate run's evaluation report


def flat_params(recipe) -> dict[str, str]:
    return {k: v[:500] for k, v in recipe.tags().items()}


def report_metrics(report) -> dict[str, float]:
    out = {}
    for task, res in report.tasks.items():
        for metric, value in res.metrics.items():
            out[f"{task}.{metric}"] = value.value
            if value.stderr is not None:
                out[f"{task}.{metric}_stderr"] = value.stderr
    for name, score in report.scores.items():   # the suites' scores with their stderrs (EvalReport.scores)
        out[name] = score.value
        if score.stderr is not None:
            out[f"{name}_stderr"] = score.stderr
    out["eval_seconds"] = report.seconds
    return out


def log_candidate(parent_run_id: str, experiment_id: str, name: str, recipe, report, tracking_uri: str,
                  tags: dict[str, str] | None = None) -> str:
    """A nested run for one candidate (the recipe as params, the scores as metrics, ``report.json``, the
    evaluation datasets, ``tags``), logged in batches and closed; returns its run id. FAILED if logging fails."""
    from medmerge.evaluation.report import samples_jsonl
    from medmerge.tracking import datasets, runs

    run = runs.Run(tracking_uri, parent_run_id, experiment_id).nested(name, {"candidate": name, **(tags or {})})
    with run.failing_on_error():
        run.params(flat_params(recipe))
        run.metrics(report_metrics(report))
        run.text(json.dumps(report.model_dump(mode="json"), indent=2), REPORT_ARTIFACT)
        for task, result in report.tasks.items():   # per-sample records (clinical text) only when log_samples
            if (records := result.sample_records()) is not None:
                run.text(samples_jsonl(records), f"samples/samples_{task}.jsonl")
        run.datasets(datasets.evaluation_datasets(report))   # digests, never rows
    run.finish()
    return run.run_id


@dataclass
class Registered:
    name: str
    version: str
    run_id: str
    reused: bool
    model_id: str | None = None     # the MLflow logged model the version points at


def register_checkpoint(name: str, checkpoint: Path, run_id: str, identity: str, tags: dict[str, Any],
                        tracking_uri: str) -> Registered:
    """Log ``checkpoint`` as an MLflow Model of the run (:func:`medmerge.tracking.models.log_checkpoint`) and
    register that model as a version of ``name``, tagged and described by its model card (idempotent by
    identity)."""
    from mlflow.exceptions import MlflowException

    from medmerge.merge.card import card_body
    from medmerge.tracking import models, runs

    c = client(tracking_uri)
    try:
        c.get_registered_model(name)
    except MlflowException:  # not registered yet (a server that is down raises RegistryError)
        c.create_registered_model(name, description="medmerge merged checkpoints")
    for mv in c.search_model_versions(f"name='{name}'"):
        if mv.tags.get("candidate_identity") == identity:
            runs.record_version(tracking_uri, name, mv.version, mv.run_id)   # a failed run deletes it (fail_touched)
            return Registered(name, str(mv.version), mv.run_id, reused=True, model_id=getattr(mv, "model_id", None))
    all_tags = {**{k: str(v)[:5000] for k, v in tags.items()}, "candidate_identity": identity, "run_id": run_id}
    logged = models.log_checkpoint(checkpoint, run_id, tracking_uri, identity, tags=all_tags)
    # the description is shown as Markdown: the card's YAML front matter would show as text
    card = card_body(models.model_card_text(checkpoint))[:models.DESCRIPTION_LIMIT]
    # await_creation_for=0: a local store creates the version READY at once; MLflow's default (300) logs
    # "Waiting up to 300 seconds for model version ..." once per version, which filled the demo's output
    mv = c.create_model_version(name, source=logged.model_uri, run_id=run_id, tags=all_tags, description=card,
                                model_id=logged.model_id, await_creation_for=0)
    runs.record_version(tracking_uri, name, mv.version, run_id)
    return Registered(name, str(mv.version), run_id, reused=False, model_id=logged.model_id)   # int on a sqlite store


@dataclass(frozen=True)
class Version:
    """A registered model version as the phases read it (MLflow's ``ModelVersion`` stays in ``tracking/``)."""

    name: str
    version: str                    # a string, whatever the store returns (a sqlite store gives an int)
    run_id: str | None              # the run it was registered from (None: registered without one)
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    stage: str = "None"             # MLflow's (deprecated) stage: None, Staging, Production or Archived
    source: str = ""                # models:/<model_id>, or runs:/<run id>/<path> for an older version
    model_id: str | None = None     # the MLflow logged model it points at (MLflow 3)


def _version(mv, name: str | None = None) -> Version:
    """The :class:`Version` record of an MLflow ``ModelVersion`` (``name`` when the entity lacks one)."""
    return Version(name=getattr(mv, "name", None) or name or "", version=str(mv.version),
                   run_id=getattr(mv, "run_id", None) or None, tags=dict(getattr(mv, "tags", None) or {}),
                   aliases=tuple(getattr(mv, "aliases", None) or ()),
                   stage=str(getattr(mv, "current_stage", None) or "None"), source=getattr(mv, "source", None) or "",
                   model_id=getattr(mv, "model_id", None))


def model_version(tracking_uri: str, model_uri: str) -> Version:
    """The registered version a ``models:/NAME@alias`` or ``models:/NAME/VERSION`` URI names on the server
    ``tracking_uri`` (MLflow's own error when there is none)."""
    c = client(tracking_uri)
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return _version(c.get_model_version_by_alias(name, alias), name)
    name, version = ref.rsplit("/", 1)
    return _version(c.get_model_version(name, version), name)


STAGE = "staging"   # the alias (and MLflow stage) promotion moves; promotion and retrain read this one


def _not_found(exc: Exception) -> bool:
    """No such registered model, or no such alias (MLflow says INVALID_PARAMETER_VALUE for the latter)."""
    code, text = getattr(exc, "error_code", ""), str(exc)
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "alias" in text
                                                 and "not found" in text)


def _read_registry(read, what: str):
    """``read()``, or None when the model or alias does not exist; any other failure names ``what``."""
    try:
        return read()
    except MedmergeError:
        raise  # the server stopped answering: client() says so
    except Exception as exc:
        if _not_found(exc):
            return None
        raise RegistryError(f"cannot {what}: {exc}") from exc


def staged_version(tracking_uri: str, name: str, alias: str = STAGE) -> Version | None:
    """The version of ``name`` under ``alias`` (``staging``), or None (no such model, or no such alias)."""
    c = client(tracking_uri)
    mv = _read_registry(lambda: c.get_model_version_by_alias(name, alias), f"read {name}@{alias} from the registry")
    return None if mv is None else _version(mv, name)


@dataclass(frozen=True)
class RunScores:
    """What the run a version was registered from recorded about its scores: its metrics (``name`` and
    ``name_stderr``; a fine-tuned model's benchmark re-check under ``after.``) and, for a merge candidate, its
    evaluation report (``report.json``, every task with its stderr)."""

    run_id: str
    metrics: dict[str, float]
    report_json: str | None


def run_scores(tracking_uri: str, run_id: str) -> RunScores:
    """The scores run ``run_id`` recorded (:class:`RunScores`); :class:`RegistryError` naming the run and the
    reason when they cannot be read (no such run, an unreadable report)."""
    c = client(tracking_uri)
    try:
        run = c.get_run(run_id)
        listed = {a.path for a in c.list_artifacts(run_id)}
    except MedmergeError:
        raise  # the server stopped answering: client() says so
    except Exception as exc:
        raise RegistryError(f"cannot read run {run_id}: {_first_line(exc)}") from exc
    report = None
    if REPORT_ARTIFACT in listed:
        from medmerge.tracking import runs

        try:
            report = runs.load_text(tracking_uri, run_id, REPORT_ARTIFACT)
        except MedmergeError:
            raise
        except Exception as exc:
            raise RegistryError(f"cannot read {REPORT_ARTIFACT} of run {run_id}: {_first_line(exc)}") from exc
    return RunScores(run_id, dict(run.data.metrics), report)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def newest_version(tracking_uri: str, name: str) -> Version | None:
    """The highest version of ``name``, or None."""
    c = client(tracking_uri)
    versions = _read_registry(lambda: c.search_model_versions(f"name='{name}'"), f"list the versions of {name}")
    if not versions:
        return None
    newest = str(max(int(v.version) for v in versions))
    # read whole: a search lists the versions without their aliases
    mv = _read_registry(lambda: c.get_model_version(name, newest), f"read {name} v{newest} from the registry")
    return None if mv is None else _version(mv, name)


def delete_version_unless_staged(tracking_uri: str, name: str, version: str, stage: str = STAGE) -> bool:
    """Delete version ``version`` of ``name`` (a failed run's: :func:`medmerge.tracking.failure.fail_touched`)
    unless ``@stage`` points at it; a registered model left without versions is deleted too. Returns whether
    the version was deleted (False: at ``@stage``, or already gone)."""
    c = client(tracking_uri)
    try:
        mv = c.get_model_version(name, str(version))
    except MedmergeError:
        raise
    except Exception as exc:
        if _not_found(exc):
            return False
        raise
    if stage in (getattr(mv, "aliases", None) or []):
        return False
    c.delete_model_version(name, str(version))
    if not c.search_model_versions(f"name='{name}'"):
        c.delete_registered_model(name)
    return True


def set_alias(name: str, alias: str, version: str, tracking_uri: str, tag: str | None = None) -> None:
    """Point ``name@alias`` at ``version``; with ``tag``, also tag the version ``tag=alias``."""
    c = client(tracking_uri)
    c.set_registered_model_alias(name, alias, version)
    if tag:
        c.set_model_version_tag(name, version, tag, alias)


def set_version_tags(name: str, version: str, tracking_uri: str, tags: dict[str, Any],
                     drop: tuple[str, ...] = ()) -> None:
    """Set ``tags`` on a registered version and remove the tags named in ``drop`` (absent ones are fine)."""
    c = client(tracking_uri)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, str(v))
    for k in drop:
        if k in (c.get_model_version(name, version).tags or {}):
            c.delete_model_version_tag(name, version, k)


def _short(tag: str | None) -> str | None:
    """A score tag as people read it (4 decimals); the tag itself keeps every digit."""
    try:
        return f"{float(tag):.4f}" if tag is not None else None
    except ValueError:
        return tag


def _tagged_scores(tags: dict) -> str:
    """``name=value, ...`` of the objectives a version is tagged with (its ``objectives`` tag; a version
    registered before that tag existed: Medical Avg and IF score), 4 decimals (the tags keep every digit)."""
    names = [n for n in tags.get("objectives", "").split(",") if n] or ["medical_avg", "if_score"]
    return ", ".join(f"{n}={_short(tags.get(n))}" for n in names)


def promote(name: str, version: str, tracking_uri: str, stage: str = STAGE, force: bool = False) -> str:
    """Point alias ``stage`` at ``version``, move it to that stage, archive the previous; return why.

    Refused: a missing version, a version whose run did not finish, and a version tagged
    ``forgetting_gate=failed`` (a fine-tuned model that lost benchmark scores) unless ``force``.
    """
    c = client(tracking_uri)
    try:
        mv = c.get_model_version(name, str(version))
    except RegistryError:
        raise  # the server is down: say so, not "no version"
    except Exception as exc:
        raise RegistryError(f"model {name} has no version {version}") from exc
    if mv.run_id:
        status = c.get_run(mv.run_id).info.status
        if status != "FINISHED":
            raise RegistryError(f"refusing to promote {name} version {version}: its run {mv.run_id} is {status}")
    gate_failed = mv.tags.get("forgetting_gate") == "failed"
    if gate_failed and not force:
        raise RegistryError(f"refusing to promote {name} version {version}: its forgetting gate failed after SFT "
                            f"({mv.tags.get('forgetting_failures', 'see the run forgetting.txt')}); "
                            f"pass --force to promote it anyway")
    previous = staged_version(tracking_uri, name, stage)   # None: nothing there yet; other failures say so
    reason = f"{name} v{version}: {_tagged_scores(mv.tags)}"
    if previous is not None and previous.version != str(mv.version):
        reason += f"; replaces v{previous.version} ({_tagged_scores(previous.tags)}), now archived"
    if gate_failed:
        reason += f"; FORCED past a failed forgetting gate ({mv.tags.get('forgetting_failures', '')})"
    c.set_registered_model_alias(name, stage, str(version))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages are deprecated in MLflow but still what the UI shows
        c.transition_model_version_stage(name, str(version), stage.capitalize(), archive_existing_versions=True)
    c.set_model_version_tag(name, str(version), "promotion_reason", reason)
    return reason
