"""A failed pipeline run ends what it touched: the runs it opened or logged to end FAILED (tag
``medmerge.failure``), and the versions registered from them are deleted. What this process touched is
recorded by :mod:`.runs` (every :class:`~medmerge.tracking.runs.Run` handle, every version registered from
one); this module closes it, through the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from medmerge.tracking import registry
from medmerge.tracking.runs import NOTE_CHARS, Run, _touched, _unreachable, _versions, get, search


@dataclass
class FailedRunReport:
    """What :func:`fail_touched` did: the runs it marked FAILED, the versions it deleted, and what it could not
    reach (best effort: a server that is down cannot be told)."""

    failed: list[str] = field(default_factory=list)
    deleted: list[tuple[str, str, str]] = field(default_factory=list)    # (uri, model name, version)
    problems: list[str] = field(default_factory=list)

    @property
    def deleted_versions(self) -> list[str]:
        return [f"{name} v{version}" for _, name, version in self.deleted]


def fail_touched(reason: str) -> FailedRunReport:
    """Close what a failed run touched: every run recorded here that is still open (RUNNING or SCHEDULED), and
    every open run nested in one of those, is marked FAILED with the tag ``medmerge.failure`` = ``reason``;
    nested runs that finished their own work stay FINISHED (a rerun reuses them). Every version registered
    here from a failed run, or from a run nested in one, is deleted: a failed run registers nothing (a
    version that was moved to ``@staging`` meanwhile is left alone). Never raises; a tracking server that
    does not answer is tried once (its runs stay as they are: the rerun resumes them)."""

    report = FailedRunReport()
    failed: dict[tuple[str, str], Run] = {}

    def attempt(uri: str, what: str, action, *args) -> None:
        if uri in _unreachable:
            return
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - a deleted run, a server that is down: say so, close the rest
            report.problems.append(f"{what}: {type(exc).__name__}: {exc}")
            if isinstance(exc, registry.RegistryError) and "not reachable" in str(exc):
                _unreachable.add(uri)

    def close(run: Run) -> None:
        status = run.status()
        if status in ("RUNNING", "SCHEDULED"):
            run.fail(reason[:NOTE_CHARS])
            report.failed.append(run.run_id)
            status = "FAILED"
        if status == "FAILED":
            failed[(run.uri, run.run_id)] = run

    for (uri, run_id), run in list(_touched.items()):
        attempt(uri, f"run {run_id}", close, run)

    def close_nested(parent: Run) -> None:   # nested runs this process never held a handle on (another pod's)
        exp = parent.experiment_id or parent.client.get_run(parent.run_id).info.experiment_id
        for child in search(parent.uri, [exp], f"tags.mlflow.parentRunId = '{parent.run_id}' and "
                                                "attributes.status = 'RUNNING'"):
            Run(parent.uri, child.run_id, exp, parent._c).fail(reason[:NOTE_CHARS])
            report.failed.append(child.run_id)

    for (uri, run_id), parent in list(failed.items()):
        attempt(uri, f"nested runs of {run_id}", close_nested, parent)
    failed_ids = {rid for _, rid in failed}

    def discard(uri: str, name: str, version: str, run_id: str) -> None:
        if run_id in failed_ids or get(uri, run_id).parent_run_id in failed_ids:
            if registry.delete_version_unless_staged(uri, name, version):
                report.deleted.append((uri, name, version))
            del _versions[(uri, name, version)]

    for (uri, name, version), run_id in list(_versions.items()):
        attempt(uri, f"{name} v{version}", discard, uri, name, version, run_id)
    for key in failed:
        _touched.pop(key, None)
    return report
