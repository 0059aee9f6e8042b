"""The finetune steps. Each is a few lines around one ``medmerge.finetune`` function.

``load_data`` and ``resolve_initialisations`` always run (they read the data and hash the
weights); every later step is cached on their *content*, so changed data or weights re-run
what depends on them and nothing else, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import tempfile
from typing import Annotated

from pydantic import BaseModel
from zenml import get_step_context, step

import materializers  # noqa: F401  (registers the medmerge materializers)
from medmerge import finetune as core
from medmerge.evaluation.report import EvalReport
from medmerge.finetune import FinetuneConfig, FinetuneSummary, InitModel, SFTCheckpoint, SFTResult, TrackingRun
from medmerge.finetune import tasks as finetune_tasks
from steps.failure import claim_registrations, fail_tracked_runs


class Initialisations(BaseModel):
    models: dict[str, InitModel]


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def load_data(config: FinetuneConfig, inits: Initialisations) -> Annotated[core.TrainingData, "training_data"]:
    """In: the run config. Out: train and held-out examples with their hashes. Fails naming the file or task."""
    return core.load_data(config, inits.models)


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def resolve_initialisations(config: FinetuneConfig) -> Annotated[Initialisations, "initialisations"]:
    """In: the run config. Out: each initialisation as a local checkpoint and its weight hash."""
    return Initialisations(models=core.resolve_initialisations(config))


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def validate_data(config: FinetuneConfig, data: core.TrainingData, inits: Initialisations,
                  tracking_uri: str | None = None) -> Annotated[TrackingRun, "mlflow_run"]:
    """In: the data, the tracking server resolved when the pipeline was built (a parameter, so part of the cache
    key: another server re-runs this step and the MLflow steps that take its run). Out: the MLflow parent run,
    holding the validation reports. Fails on a bad dataset."""
    return core.validate_and_open_run(config, data, inits.models, run_name=get_step_context().pipeline_run.name,
                                      tracking_uri=tracking_uri)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def subsample(config: FinetuneConfig, data: core.TrainingData) -> Annotated[dict[str, list[str]], "few_shot_subsets"]:
    """In: the train split. Out: {shots: example ids}, nested and seeded."""
    return core.subsample(config, data)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def baseline(config: FinetuneConfig, inits: Initialisations, init: str) -> Annotated[EvalReport, "pre_sft_report"]:
    """In: one initialisation. Out: its benchmark scores before SFT."""
    return core.evaluate_initialisation(config, inits.models[init])


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def sft(config: FinetuneConfig, data: core.TrainingData, subsets: dict[str, list[str]], inits: Initialisations,
        run: TrackingRun, init: str, shots: str) -> Annotated[SFTCheckpoint, "sft_checkpoint"]:
    """In: one initialisation and shot size. Out: the fine-tuned checkpoint (its nested MLflow run opened)."""
    return core.run_sft(config, data, subsets, inits.models[init], shots, run)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def evaluate_sft(config: FinetuneConfig, data: core.TrainingData, checkpoint: SFTCheckpoint, before: EvalReport,
                 run: TrackingRun) -> Annotated[SFTResult, "sft_result"]:
    """In: a fine-tuned checkpoint and its initialisation's scores. Out: composite scores and the forgetting gate."""
    return core.evaluate_sft(config, data, checkpoint, before, run)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def summarise(config: FinetuneConfig, run: TrackingRun, data: core.TrainingData, inits: Initialisations,
              checkpoints: list[SFTCheckpoint],
              results: list[SFTResult]) -> Annotated[FinetuneSummary, "finetune_summary"]:
    """In: every result. Out: learning curves, the forgetting table, registered versions (tagged with the gate)."""
    return core.summarise_and_register(config, run, checkpoints, results,
                                       tempfile.mkdtemp(prefix="medmerge-figures-"), data=data, inits=inits.models)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def compare_tasks(config: FinetuneConfig, results: list[SFTResult],
                  tracking_uri: str | None = None) -> Annotated[finetune_tasks.CrossTaskSummary, "table2"]:
    """In: every task's results (a multi-task run). Out: Table 2 across tasks and one learning-curve figure per
    task, logged to the run tagged ``medmerge.kind = tasks``."""
    return finetune_tasks.log_cross_task(config, results, tracking_uri or config.resolved_tracking_uri(),
                                         run_name=get_step_context().pipeline_run.name,
                                         figures_dir=tempfile.mkdtemp(prefix="medmerge-figures-"))
