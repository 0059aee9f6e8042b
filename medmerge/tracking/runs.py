"""The life of an MLflow run, in one place: open or resume a parent run by key, open nested runs, log to
them, close them. The phases (search, finetune, retrain, promotion, cost) hold :class:`Run` handles and
make no MLflow calls of their own.

* A parent run is found again by its ``medmerge.run_key`` tag (:func:`open_parent`): a rerun of a run that
  did not finish (killed, the server went down) resumes it; a finished one is never reopened: the rerun
  gets a new run.
* Every call goes through :func:`medmerge.tracking.connection.client`, so a server that stops answering is one
  error naming its URI, not minutes of retries.
* A failed run leaves nothing RUNNING and registers nothing: every :class:`Run` handle and every version
  registered from one is recorded; :func:`medmerge.tracking.failure.fail_touched` (the steps' failure hook) marks
  the open runs FAILED and deletes those versions. A rerun resumes a FAILED parent as it does a killed one.
* Params are cut to MLflow's 6000 characters here, once. Clinical text is never logged by this module on its
  own: what reaches a run is what the phase passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmerge.tracking import connection

PARAM_CHARS = 6000     # MLflow's limit on a param value (MAX_PARAM_VAL_LENGTH)
NOTE_CHARS = 7900      # a tag value holds 8000; the run description is the tag mlflow.note.content
BATCH = 100            # params or tags per log_batch request (MLflow's limit)
METRIC_BATCH = 1000    # metrics per log_batch request (MLflow's limit)


def _client(uri: str):
    return connection.client(uri)


@dataclass(frozen=True)
class RunRecord:
    """A run as the phases read it (MLflow's ``Run`` entity stays in ``tracking/``): its ids, name and status,
    its tags and params, and each metric's latest value."""

    run_id: str
    experiment_id: str
    name: str | None
    status: str                         # RUNNING, SCHEDULED, FINISHED, FAILED or KILLED
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def parent_run_id(self) -> str | None:
        """The run it is nested in (``mlflow.parentRunId``), or None."""
        return self.tags.get("mlflow.parentRunId")


def _record(run) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(run_id=info.run_id, experiment_id=info.experiment_id, name=info.run_name, status=info.status,
                     tags=dict(data.tags), params=dict(data.params), metrics=dict(data.metrics))


@dataclass
class Run:
    """A handle on one MLflow run on ``uri``."""

    uri: str
    run_id: str
    experiment_id: str | None = None
    _c: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _touched.setdefault((self.uri, self.run_id), self)   # what fail_touched closes if a step fails

    @property
    def client(self):
        if self._c is None:
            self._c = _client(self.uri)
        return self._c

    # -- logging ---------------------------------------------------------------------------------
    # Values go in MLflow's log_batch: one round trip per request of up to 1000 metrics or 100 params
    # or tags (its limits), instead of one per value.
    def param(self, key: str, value: Any) -> None:
        self.params({key: value})

    def params(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        self._batch(params=[Param(k, str(v)[:PARAM_CHARS]) for k, v in values.items()])

    def metric(self, key: str, value: float, step: int | None = None) -> None:
        self.metrics({key: value}, step=step)

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(k, float(v), now, step or 0) for k, v in values.items()])

    def series(self, key: str, values: Iterable[float], first_step: int = 1) -> None:
        """One metric's history (a loss curve): ``values[i]`` at step ``first_step + i``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._batch(metrics=[Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)])

    def tag(self, key: str, value: Any) -> None:
        self.tags({key: value})

    def tags(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._batch(tags=[RunTag(k, str(v)) for k, v in values.items()])

    def _batch(self, metrics: Sequence = (), params: Sequence = (), tags: Sequence = ()) -> None:
        for i in range(0, len(metrics), METRIC_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + METRIC_BATCH])
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        for i in range(0, len(tags), BATCH):
            self.client.log_batch(self.run_id, tags=tags[i:i + BATCH])

    def describe(self, text: str) -> None:
        """The run's description (the "Description" box of its page)."""
        self.tag("mlflow.note.content", text[:NOTE_CHARS])

    def text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def json(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def datasets(self, entries: Iterable) -> None:
        """MLflow datasets (digest, schema, source; never rows): ``[(dataset, context), ...]``."""
        from medmerge.tracking import datasets

        datasets.log(self.client, self.run_id, list(entries))

    # -- life ------------------------------------------------------------------------------------
    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def is_open(self) -> bool:
        """Not yet FINISHED, FAILED or KILLED: a step may still log to it."""
        return self.status() in ("RUNNING", "SCHEDULED")

    def open_or_nested(self, name: str, tags: Mapping[str, Any] | None = None) -> Run:
        """This run while it has not finished (a FAILED or KILLED one, which a rerun continues, set RUNNING
        again); once FINISHED, a new nested run under it (a rerun of a later step never writes into a parent
        run that is already closed)."""
        status = self.status()
        if status == "FINISHED":
            return self.nested(name, tags)
        if status not in ("RUNNING", "SCHEDULED"):
            self.client.update_run(self.run_id, status="RUNNING")
        return self

    def finish(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED")

    def fail(self, reason: str | None = None) -> None:
        if reason:
            self.tag("medmerge.failure", reason)
        self.client.set_terminated(self.run_id, status="FAILED")

    @contextmanager
    def failing_on_error(self):
        """Mark the run FAILED when the block raises (then re-raise); leave it open otherwise."""
        try:
            yield self
        except BaseException:
            self.fail()
            raise

    def nested(self, name: str, tags: Mapping[str, Any] | None = None) -> Run:
        """A new run under this one (``mlflow.parentRunId``)."""
        exp = self._experiment()
        run = self.client.create_run(exp, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, **{k: str(v) for k, v in
                                                                                (tags or {}).items()}})
        return Run(self.uri, run.info.run_id, exp, self._c)

    def nested_by_key(self, name: str, key_tag: str, key: str, tags: Mapping[str, Any] | None = None) -> Run:
        """The nested run tagged ``key_tag == key`` that has not finished (a killed run's), set RUNNING again;
        else a new one with that tag."""
        for r in search(self.uri, [self._experiment()], max_results=5, filter_string=(
                f"tags.mlflow.parentRunId = '{self.run_id}' and tags.`{key_tag}` = '{key}'")):
            if r.status != "FINISHED":
                self.client.update_run(r.run_id, status="RUNNING")
                return self.child(r.run_id)
        return self.nested(name, {**(tags or {}), key_tag: key})

    def children(self) -> list[RunRecord]:
        """The nested runs, as records (a handle on one: :meth:`child`)."""
        return search(self.uri, [self._experiment()], f"tags.mlflow.parentRunId = '{self.run_id}'")

    def _experiment(self) -> str:
        """This run's experiment id (asked of the server when the handle was made without it)."""
        return self.experiment_id or self.client.get_run(self.run_id).info.experiment_id

    def child(self, run_id: str) -> Run:
        """A handle on run ``run_id`` of this run's experiment (one of :meth:`children`), sharing its client."""
        return Run(self.uri, run_id, self.experiment_id, self._c)


class HasParentRun:
    """For a phase's record of where it logs (fields ``tracking_uri``, ``experiment_id``, ``parent_run_id``; the
    record travels between pipeline steps, a handle does not): :meth:`parent_run`, the handle on that run."""

    tracking_uri: str
    experiment_id: str | None
    parent_run_id: str

    def parent_run(self) -> Run:
        return Run(self.tracking_uri, self.parent_run_id, self.experiment_id or None)


def experiment(uri: str, name: str, client=None) -> str:
    """The id of experiment ``name``, created if needed (with ``client`` when the caller has one)."""
    c = client or _client(uri)
    exp = c.get_experiment_by_name(name)
    return exp.experiment_id if exp else c.create_experiment(name)


def get(uri: str, run_id: str) -> RunRecord:
    """Run ``run_id`` (ids, status, tags, params, metrics)."""
    return _record(_client(uri).get_run(run_id))


def search(uri: str, experiment_ids: list[str], filter_string: str = "", max_results: int = 5000) -> list[RunRecord]:
    """The runs of ``experiment_ids`` matching MLflow's ``filter_string``."""
    return [_record(r) for r in _client(uri).search_runs(experiment_ids, filter_string=filter_string,
                                                         max_results=max_results)]


def find_experiment(uri: str, name: str) -> str | None:
    """The id of experiment ``name``, or None when there is none (nothing is created)."""
    exp = _client(uri).get_experiment_by_name(name)
    return exp.experiment_id if exp else None


def create(uri: str, experiment_name: str, run_name: str, tags: Mapping[str, Any] | None = None) -> Run:
    """A new top-level run in ``experiment_name`` (created if needed)."""
    c = _client(uri)
    exp_id = experiment(uri, experiment_name, c)
    run = c.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
    return Run(uri, run.info.run_id, exp_id, c)


def latest(uri: str, experiment_name: str, filter_string: str) -> RunRecord | None:
    """The newest run of ``experiment_name`` matching ``filter_string``, or None (no such experiment or run)."""
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        return None
    found = c.search_runs([exp.experiment_id], filter_string=filter_string, order_by=["attributes.start_time DESC"],
                          max_results=1)
    return _record(found[0]) if found else None


def load_text(uri: str, run_id: str, artifact_path: str) -> str:
    """A text artifact of a run on the server ``uri``."""
    import mlflow

    _client(uri)   # points mlflow's fluent API at uri, keeping the user's MLFLOW_TRACKING_URI
    with connection.unreachable_as_error(uri, f"reading {artifact_path} of run {run_id}"):
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_path}")


def delete(run: Run) -> None:
    run.client.delete_run(run.run_id)
    _touched.pop((run.uri, run.run_id), None)


def open_parent(uri: str, experiment_name: str, key: str, name: str, phase: str,
                tags: Mapping[str, Any] | None = None) -> tuple[Run, bool]:
    """The parent run tagged ``medmerge.run_key == key`` that has not finished, set RUNNING again; else a new
    one. Returns ``(run, resumed)``. A finished run is never written to again."""
    c = _client(uri)
    exp_id = experiment(uri, experiment_name, c)
    for r in search(uri, [exp_id], f"tags.`medmerge.run_key` = '{key}'", max_results=5):
        if r.status != "FINISHED":
            c.update_run(r.run_id, status="RUNNING")
            return Run(uri, r.run_id, exp_id, c), True
    run = c.create_run(exp_id, run_name=name, tags={"medmerge.phase": phase, "medmerge.run_key": key,
                                                     **{k: str(v) for k, v in (tags or {}).items()}})
    return Run(uri, run.info.run_id, exp_id, c), False


def start_system_metrics(uri: str, run_id: str, interval: float = 5.0):
    """MLflow's system-metrics monitor (CPU, memory, GPU series) on a run, started; None when it cannot run
    (a warning says why). Stop it with ``.finish()``."""
    import inspect
    import logging

    # its start/stop lines would come twice per step; warnings still show
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        kwargs: dict[str, Any] = {"sampling_interval": interval, "samples_before_logging": 1, "resume_logging": True}
        if "tracking_uri" in inspect.signature(SystemMetricsMonitor).parameters:
            kwargs["tracking_uri"] = uri
        monitor = SystemMetricsMonitor(run_id, **kwargs)
        monitor.start()
        return monitor
    except Exception as exc:  # noqa: BLE001 - monitoring is optional: say so and go on
        logging.getLogger(__name__).warning("MLflow system metrics are off for run %s: %s", run_id, exc)
        return None


# ---------------------------------------------------------------------------------------------
# a failed pipeline run: what it touched ends FAILED, and it registers nothing
# ---------------------------------------------------------------------------------------------
# Every run this process holds a handle on (opened, resumed, or logged to: :class:`Run` records itself) and
# every model version registered from one (registry.register_checkpoint calls record_version). A step that
# fails calls fail_touched (the steps' failure hook, and the pipeline launcher around the whole run).
_touched: dict[tuple[str, str], Run] = {}
_versions: dict[tuple[str, str, str], str] = {}    # (uri, model name, version) -> the run it was registered from
_unreachable: set[str] = set()                     # tracking URIs fail_touched found down (not tried again)
_unclaimed: list[tuple[str, str, str]] = []        # versions recorded since claim_versions last ran


def record_version(uri: str, name: str, version: str, run_id: str) -> None:
    _versions[(uri, name, str(version))] = run_id
    _unclaimed.append((uri, name, str(version)))


def claim_versions() -> list[tuple[str, str, str]]:
    """The versions recorded since the last call, ``(uri, name, version)`` (the pipeline's hooks note which step
    registered them: a failed run's deletion must also expire that step's cached result)."""
    out = list(_unclaimed)
    _unclaimed.clear()
    return out


def failure_reason(where: str, exc: BaseException) -> str:
    """``"<where>: <the error's first line>"``, the ``medmerge.failure`` tag of a failed run."""
    text = str(exc).strip()
    return f"{where}: {text.splitlines()[0] if text else type(exc).__name__}"


def forget_touched() -> None:
    """Start afresh (a new pipeline run in this process): what earlier runs touched is theirs."""
    _touched.clear()
    _versions.clear()
    _unreachable.clear()
    _unclaimed.clear()
