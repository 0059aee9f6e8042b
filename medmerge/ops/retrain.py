"""Scheduled retraining: has anything changed since the last promoted version? (the core; no ZenML here)

What counts as a change, by content hash only:

* a parent checkpoint: the sha256 of every weight file of every parent of the merge search
  (:func:`medmerge.selection.search.check_parents`), compared with what the tags of the version the search's
  registered model has under the ``staging`` alias record of its parents (read through
  :mod:`medmerge.io.provenance`);
* the training data of each task of the finetune run: ``TrainingData.train_sha256`` (after the configured
  cleaning), compared with the ``train_sha256`` tag of that task's fine-tuned model's ``staging`` version,
  or of its newest version when none is staged (a multi-task run registers one model per task,
  ``<registered_model>-<task>``; see :meth:`medmerge.finetune.FinetuneConfig.task_configs`).

The initialisations of the fine-tuning are *not* compared: one given as ``models:/NAME@staging``
resolves to whatever is promoted now, which a merge search changes. Nothing promoted yet, nothing
fine-tuned yet, or a previous retrain that did not finish also count as reasons to run.
Changes to the run configurations themselves (ratios, suites, shots ...) are not looked for: run
the pipelines directly for those.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from medmerge.io import provenance
from medmerge.io.provenance import ParentWeights
from medmerge.tracking.registry import STAGE

if TYPE_CHECKING:   # the configs import the tracking and evaluation layers: only the type checker needs them here
    from medmerge.finetune import FinetuneConfig
    from medmerge.selection.search import SearchConfig

RETRAIN_EXPERIMENT = "medmerge-retrain"
_TAG_LIMIT = 5000        # medmerge.tracking.registry.register_checkpoint cuts tag values to this length
_TAG_NOOP, _TAG_RAN = "noop", "ran"


class ComparedVersion(BaseModel):
    """The registered version a fingerprint was compared with."""

    name: str
    version: str
    chosen_by: Literal["alias staging", "newest version"]
    sha256: str | None            # the tag compared (the parents' fingerprint, or train_sha256); None: none


class TaskData(BaseModel):
    """One task's training data now, and the fine-tuned version it was compared with."""

    task: str | None = None                         # its label in a multi-task run; None: the run's one task
    registered_model: str
    train_sha256: str
    finetuned: ComparedVersion | None = None        # None: nothing registered for it yet

    def key(self, name: str) -> str:
        """A parameter's name for this task (plain for a one-task run)."""
        return name if self.task is None else f"{name}.{self.task}"


class RetrainDecision(BaseModel):
    """Whether to run merge search and fine-tuning again, and why."""

    changed: bool
    reasons: list[str]
    parents: ParentWeights                          # parent ref -> {weight file: sha256}, now
    data: list[TaskData]                            # one per task of the finetune run, in its order
    promoted: ComparedVersion | None = None         # the search's registered model @staging
    last_retrain: dict[str, str] | None = None      # the previous run that ran the pipelines: run_id, status
    notes: list[str] = Field(default_factory=list)  # worth saying, not a reason to run

    @property
    def parents_fingerprint(self) -> str:
        return provenance.fingerprint(self.parents)

    def describe(self) -> str:
        lines = []
        for ref, files in sorted(self.parents.items()):
            digests = ", ".join(f"{f} {h[:12]}" for f, h in sorted(files.items()))
            lines.append(f"parent   {ref}: {digests}")
        if self.promoted is not None:
            lines.append(f"promoted {self._version(self.promoted)}")
        for d in self.data:
            lines.append(f"data     {d.key('train_sha256')} {d.train_sha256[:12]}")
            if d.finetuned is not None:
                lines.append(f"tuned    {self._version(d.finetuned)}")
        if self.changed:
            lines.append("changed: " + "; ".join(self.reasons))
        else:
            lines.append("unchanged: parents and training data match the promoted versions")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    @staticmethod
    def _version(v: ComparedVersion) -> str:
        return f"{v.name} v{v.version} ({v.chosen_by})"


def _short(h: str | None) -> str:
    return "none" if not h else h[:12] + "…"


def compare_parents(current: ParentWeights, version_tags: Mapping[str, str],
                    where: str) -> tuple[list[str], list[str]]:
    """Reasons (and notes) comparing the current parents' weight hashes with what a registered version's tags
    record of its parents (:func:`medmerge.io.provenance.read_tags`).

    By content: a parent moved to a new path with the same weight files is no change."""
    stored = provenance.read_tags(version_tags)
    if stored.matches(current):
        return [], []
    old = stored.weights
    if old is None:
        if stored.raw is None:
            return [f"{where} has no {stored.tag} tag"], []
        cut = len(stored.raw) >= _TAG_LIMIT
        if cut and stored.fingerprint is None and provenance.weights_json(current).startswith(stored.raw):
            return [], [f"{where}'s {stored.tag} tag was cut at {_TAG_LIMIT} characters; the part kept matches"]
        if stored.fingerprint is not None:
            why = (f"the parents changed since {where} (its {provenance.FINGERPRINT_TAG} differs; its {stored.tag} "
                   f"tag {'was cut' if cut else 'is unreadable'}, so which parent is not known)")
            return [why], []
        return [f"{where}'s {stored.tag} tag is not a readable mapping of parents to weight files"], []
    reasons, notes = [], []
    gone = {r: w for r, w in old.items() if r not in current}
    for ref, files in sorted(current.items()):
        if ref in old:
            if old[ref] == files:
                continue
            diffs = [f"{f} {_short(old[ref].get(f))} -> {_short(h)}" for f, h in sorted(files.items())
                     if old[ref].get(f) != h]
            diffs += [f"{f} removed" for f in sorted(set(old[ref]) - set(files))]
            reasons.append(f"parent {ref} changed since {where}: {'; '.join(diffs)}")
            continue
        same = [r for r, w in gone.items() if w == files]
        if same:
            notes.append(f"parent {ref} has the weights of {same[0]} ({where}): moved, unchanged")
            gone.pop(same[0])
        else:
            reasons.append(f"parent {ref} is new (not a parent of {where})")
    reasons += [f"parent {r} of {where} is no longer configured" for r in sorted(gone)]
    return reasons, notes


# --- the registry ---------------------------------------------------------------------------------

def _last_retrain(uri: str, key: str) -> dict[str, str] | None:
    from medmerge.tracking import runs

    run = runs.latest(uri, RETRAIN_EXPERIMENT,
                      f"tags.`medmerge.ops.retrain` = '{_TAG_RAN}' and tags.`medmerge.ops.retrain.key` = '{key}'")
    return {"run_id": run.run_id, "status": run.status} if run else None


def _key(search_cfg: SearchConfig, ft_cfg: FinetuneConfig) -> str:
    return f"{search_cfg.registered_model}->{ft_cfg.registered_model}"


# --- fingerprints ---------------------------------------------------------------------------------

def current_parents(search_cfg: SearchConfig) -> ParentWeights:
    """``{parent ref: {weight file: sha256}}`` now (hashes are cached by file size and mtime)."""
    from medmerge.selection.search import check_parents

    return provenance.weights(check_parents(search_cfg))


def current_train_sha256(ft_cfg: FinetuneConfig) -> tuple[dict[str | None, str], list[str]]:
    """``{task label: TrainingData.train_sha256}`` as the finetune pipeline computes it (label None: the run's
    one task), and notes.

    The cleaning needs a tokenizer only with ``drop_overlong``; ``load_data`` takes it from the first
    initialisation, so only that one is resolved (a registry version is downloaded as the pipeline would).
    When it is a registry alias that does not exist yet, the first local initialisation stands in."""
    from medmerge.finetune import FinetuneError, load_data, resolve_initialisations

    notes: list[str] = []
    inits = None
    if ft_cfg.drop_overlong:
        first = ft_cfg.model_copy(update={"initialisations": ft_cfg.initialisations[:1]})
        try:
            inits = resolve_initialisations(first)
        except FinetuneError:
            local = [i for i in ft_cfg.initialisations if i.path is not None]
            if not local:
                raise
            inits = resolve_initialisations(ft_cfg.model_copy(update={"initialisations": (local[0],)}))
            notes.append(f"{ft_cfg.initialisations[0].model_uri} does not resolve yet: the data's overlong check "
                         f"used {local[0].name}'s tokenizer")
    return {label: load_data(tc, inits).train_sha256 for label, tc in ft_cfg.task_configs()}, notes


# --- the decision ---------------------------------------------------------------------------------

def decide(search_cfg: SearchConfig, ft_cfg: FinetuneConfig) -> RetrainDecision:
    """Compare the current parents and training data with the promoted versions' tags."""
    from medmerge.tracking import registry

    parents = current_parents(search_cfg)
    train, notes = current_train_sha256(ft_cfg)
    reasons: list[str] = []

    uri = search_cfg.resolved_tracking_uri()
    mv = registry.staged_version(uri, search_cfg.registered_model)
    promoted = None
    if mv is None:
        reasons.append(f"nothing promoted yet: {search_cfg.registered_model} has no {STAGE} version")
    else:
        promoted = ComparedVersion(name=mv.name, version=str(mv.version), chosen_by="alias staging",
                                   sha256=provenance.read_tags(mv.tags).fingerprint)
        r, n = compare_parents(parents, mv.tags, f"{mv.name} v{mv.version}")
        reasons += r
        notes += n

    data = []
    for label, tc in ft_cfg.task_configs():
        task, why = compare_data(TaskData(task=label, registered_model=tc.registered_model,
                                          train_sha256=train[label]), tc.resolved_tracking_uri())
        data.append(task)
        reasons += why

    last = _last_retrain(uri, _key(search_cfg, ft_cfg))
    if last is not None and last["status"] != "FINISHED":
        reasons.append(f"the last retrain that ran the pipelines (MLflow run {last['run_id']}) ended "
                       f"{last['status']}")
    return RetrainDecision(changed=bool(reasons), reasons=reasons, parents=parents, data=data,
                           promoted=promoted, last_retrain=last, notes=notes)


def compare_data(task: TaskData, uri: str) -> tuple[TaskData, list[str]]:
    """``task`` with the version it was compared with (``staging``, else the newest), and the reasons its
    training data counts as changed (none: unchanged)."""
    from medmerge.tracking import registry

    name = task.registered_model
    chosen: Literal["alias staging", "newest version"] = "alias staging"
    fv = registry.staged_version(uri, name)
    if fv is None:
        fv, chosen = registry.newest_version(uri, name), "newest version"
    if fv is None:
        return task, [f"nothing fine-tuned yet: {name} has no version"]
    tag = fv.tags.get("train_sha256")
    task = task.model_copy(update={"finetuned": ComparedVersion(name=fv.name, version=str(fv.version),
                                                                chosen_by=chosen, sha256=tag)})
    if tag is None:
        return task, [f"{name} v{fv.version} has no train_sha256 tag"]
    if tag != task.train_sha256:
        return task, [f"training data changed since {name} v{fv.version}: train_sha256 {_short(tag)} -> "
                      f"{_short(task.train_sha256)}"]
    return task, []


# --- the record -----------------------------------------------------------------------------------

def open_record(decision: RetrainDecision, search_cfg: SearchConfig, ft_cfg: FinetuneConfig, tracking_uri: str) -> str:
    """An MLflow run in ``medmerge-retrain`` for this decision; a no-op run is closed at once. Returns its id."""
    from medmerge.tracking import runs

    outcome = _TAG_RAN if decision.changed else _TAG_NOOP
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    tags = {"medmerge.phase": "retrain", "medmerge.ops.retrain": outcome, "medmerge.ops.retrain.key": _key(search_cfg, ft_cfg),
            "medmerge.ops.retrain.reasons": ("; ".join(decision.reasons) or "nothing changed")[:7900],
            "medmerge.ops.retrain.host": socket.gethostname()}
    record = runs.create(tracking_uri, RETRAIN_EXPERIMENT, f"retrain-{outcome}-{stamp}", tags)
    params = {"parents_fingerprint": decision.parents_fingerprint,
              "search_registered_model": search_cfg.registered_model,
              "finetune_registered_model": ft_cfg.registered_model,
              "promoted_version": decision.promoted.version if decision.promoted else "none"}
    for d in decision.data:
        params[d.key("train_sha256")] = d.train_sha256
        params[d.key("finetuned_version")] = d.finetuned.version if d.finetuned else "none"
    for i, (ref, files) in enumerate(sorted(decision.parents.items())):
        params[f"parent{i}"] = ref[:6000]
        for f, h in sorted(files.items()):
            params[f"parent{i}.sha256.{f}"[:250]] = h
    record.params(params)
    record.json(decision.model_dump(mode="json"), "decision.json")
    if not decision.changed:
        record.finish()
    return record.run_id


def close_record(tracking_uri: str, run_id: str, ok: bool, outputs: dict | None = None,
                 error: str | None = None) -> None:
    """Finish a run that ran the pipelines: FINISHED with what they registered, or FAILED with the error."""
    from medmerge.tracking import runs

    record = runs.Run(tracking_uri, run_id)
    for k, v in (outputs or {}).items():
        if isinstance(v, (dict, list)):
            record.json(v, f"{k}.json")
        else:
            record.tag(f"medmerge.ops.retrain.{k}", str(v)[:7900])
    if error:
        record.tag("medmerge.ops.retrain.error", error[:7900])
    record.finish() if ok else record.fail()
