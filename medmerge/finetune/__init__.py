"""Phase two, the core the ``finetune`` ZenML steps call (no ZenML here).

load the task -> validate it (great_expectations; the report goes to MLflow) -> nested few-shot
subsets -> for every initialisation (the clinical parent, the instruct parent, the selected
merges) score it on the benchmark suites once, then for every shot size: SFT -> generate on the
held-out split -> composite score -> forgetting check against the initialisation's own pre-SFT
scores -> learning curves, forgetting table, registration (each version tagged with its gate).

MLflow: one parent run per pipeline run (found again by its key, so a resumed run logs into the
same parent), one nested run per (initialisation, shots). Clinical text (rows, generations) is
never logged unless ``log_samples`` asks for it, and then at most :data:`MAX_LOGGED_SAMPLES`.

The modules, in the order a run meets them: :mod:`.config` (the run configuration), :mod:`.artifacts`
(what the steps hand each other), :mod:`.data`, :mod:`.train` (initialisations; per (initialisation,
shots) SFT, generation, scores, gate), :mod:`.summary` (curves, tables, registration), :mod:`.tasks`
(several tasks in one run). Everything is importable from ``medmerge.finetune``.
"""

from __future__ import annotations

from medmerge.finetune.artifacts import (
    FinetuneSummary,
    InitModel,
    SFTCheckpoint,
    SFTResult,
    TrackingRun,
    TrainingData,
    TrainingLoss,
)
from medmerge.finetune.config import (
    DEFAULT_SHOTS,
    MAX_LOGGED_SAMPLES,
    ZERO_SHOT,
    FinetuneConfig,
    FinetuneError,
    ForgettingSettings,
    Initialisation,
    Shot,
    TaskSpec,
    shot_label,
)
from medmerge.finetune.data import (
    input_token_limit,
    load_data,
    open_parent_run,
    run_key,
    subsample,
    validate_and_open_run,
)
from medmerge.finetune.summary import (
    cost_table,
    curve_table,
    forgetting_table,
    learning_curves,
    plot_curves,
    summarise_and_register,
)
from medmerge.finetune.tasks import CrossTaskSummary, group_by_task, log_cross_task
from medmerge.finetune.train import (
    SFT_RECORD,
    evaluate_initialisation,
    evaluate_sft,
    resolve_initialisations,
    run_sft,
    sft_identity,
)

__all__ = [
    "DEFAULT_SHOTS", "FinetuneConfig", "FinetuneError", "ForgettingSettings", "Initialisation",
    "MAX_LOGGED_SAMPLES", "Shot", "TaskSpec", "ZERO_SHOT", "shot_label", "FinetuneSummary", "InitModel",
    "SFTCheckpoint", "SFTResult", "TrackingRun", "TrainingData", "TrainingLoss", "input_token_limit", "load_data",
    "open_parent_run", "run_key", "subsample", "validate_and_open_run", "SFT_RECORD", "evaluate_initialisation",
    "evaluate_sft", "resolve_initialisations", "run_sft", "sft_identity", "cost_table", "curve_table",
    "forgetting_table", "learning_curves", "plot_curves", "summarise_and_register", "CrossTaskSummary",
    "group_by_task", "log_cross_task",
]
