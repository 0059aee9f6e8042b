"""What the finetune steps hand each other (ZenML artifacts): data, runs, checkpoints, results, summary."""

from __future__ import annotations

from pydantic import BaseModel, Field

from medmerge.evaluation.report import EvalReport
from medmerge.finetune.forgetting import ForgettingReport
from medmerge.generation.data import GenerationExample
from medmerge.tracking.runs import HasParentRun


class TrainingData(BaseModel):
    """The loaded train and held-out examples and their content hashes (what a cache key needs)."""

    task: str
    train: list[GenerationExample]
    eval: list[GenerationExample]
    train_sha256: str
    eval_sha256: str
    max_input_tokens: int | None = None     # the context check's limit
    dropped: dict[str, list[str]] = Field(default_factory=dict)   # "<split>: <reason>" -> ids (opt-in cleaning)


class TrackingRun(BaseModel, HasParentRun):
    """Where a finetune run logs (``parent_run()``: the handle on its parent run)."""

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
    table2: str = ""                         # Markdown: rows init x shots, columns tasks (medmerge.finetune.table2)
    figures: dict[str, str] = Field(default_factory=dict)
