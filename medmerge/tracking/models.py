"""Checkpoints as MLflow Models: the transformers flavor, logged from the checkpoint directory.

A registered version's source is ``models:/<model_id>``, an MLflow 3 *logged model* holding an
``MLmodel`` (flavors ``transformers`` and ``python_function``, task ``text-generation``), a signature
and an input example, the checkpoint under ``model/`` and the model card as ``model_card.md``. So
``mlflow.transformers.load_model("models:/NAME@staging")``, ``mlflow.pyfunc.load_model`` and
``mlflow models serve -m models:/NAME@staging`` work on it. The weights are copied as files, never
loaded (a checkpoint larger than memory logs the same way), and stored once: the candidate run
holds no second copy.

The candidate run's metrics (logged at step 0 before the model) are linked to the logged model by
MLflow (``log_model`` with the run id re-logs them with ``model_id``), so the model page shows them.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TASK = "text-generation"
MODEL_DIR = "model"          # where the transformers flavor keeps the checkpoint inside the logged model
# What a caller may pass as ``params`` to predict / POST /invocations; the values are the defaults.
GENERATION_PARAMS = {"max_new_tokens": 64, "do_sample": False, "temperature": 1.0}
# Not clinical text (nothing clinical reaches MLflow unless log_samples asks for it).
INPUT_EXAMPLE = "Write a one-line summary: the follow-up visit was routine."
DESCRIPTION_LIMIT = 5000     # the registry's description column


def signature():
    """String prompt in, generated string out, generation settings as params."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    kinds = {bool: "boolean", int: "long", float: "double"}
    return ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]),
                          params=ParamSchema([ParamSpec(k, kinds[type(v)], v) for k, v in GENERATION_PARAMS.items()]))


def model_card_text(checkpoint: Path) -> str:
    card = Path(checkpoint) / "README.md"
    return card.read_text(encoding="utf-8") if card.exists() else f"# {Path(checkpoint).name}\n"


def _pip_requirements() -> list[str]:
    # MLflow's default list imports torchvision (absent here) to pin it; these are what loading needs.
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "tokenizers", "safetensors", "accelerate")
            if _installed(p)]


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


@contextmanager
def _transformers5_task_classes():
    """MLflow (3.17) reads ``check_task(task)[1]["impl"].__name__`` when it logs a checkpoint directory;
    transformers 5 keeps ``impl`` as a dotted string. Hand MLflow the class while it logs."""
    from transformers import pipelines

    original = pipelines.check_task

    def check_task(task):
        name, meta, options = original(task)
        impl = meta.get("impl")
        if isinstance(impl, str):
            module, _, cls = impl.rpartition(".")
            meta = {**meta, "impl": getattr(importlib.import_module(module), cls)}
        return name, meta, options

    pipelines.check_task = check_task
    try:
        yield
    finally:
        pipelines.check_task = original


@dataclass
class LoggedCheckpoint:
    model_id: str
    model_uri: str           # models:/<model_id>
    reused: bool


def log_checkpoint(checkpoint: Path, run_id: str, tracking_uri: str, identity: str,
                   tags: dict[str, str] | None = None) -> LoggedCheckpoint:
    """Log ``checkpoint`` (a directory with ``config.json`` and a tokenizer) as a transformers-flavor model
    of run ``run_id``. A model of that run already logged with the same ``identity`` (a rerun after the
    registration was interrupted) is reused, not logged again."""
    import mlflow
    from huggingface_hub import ModelCard

    from medmerge.tracking.connection import client, unreachable_as_error

    c = client(tracking_uri)
    run = c.get_run(run_id)
    exp_id = run.info.experiment_id
    for m in c.search_logged_models([exp_id], filter_string=f"tags.`candidate_identity` = '{identity}'"):
        if m.source_run_id == run_id and str(m.status).endswith("READY"):
            return LoggedCheckpoint(m.model_id, f"models:/{m.model_id}", reused=True)
    mlflow.set_experiment(experiment_id=exp_id)  # the logged model belongs beside its run, not in "Default"
    with _transformers5_task_classes(), unreachable_as_error(tracking_uri, "logging the model"):
        info = mlflow.transformers.log_model(
            transformers_model=str(Path(checkpoint).resolve()), name=MODEL_DIR, task=TASK, run_id=run_id,
            signature=signature(), input_example=(INPUT_EXAMPLE, {"max_new_tokens": 16}),
            model_card=ModelCard(model_card_text(checkpoint)), model_config=dict(GENERATION_PARAMS),
            pip_requirements=_pip_requirements(),
            tags={**{k: str(v)[:5000] for k, v in (tags or {}).items()}, "candidate_identity": identity})
    return LoggedCheckpoint(info.model_id, info.model_uri, reused=False)


def download_checkpoint(mv, tracking_uri: str, dst: Path) -> Path:
    """The checkpoint directory of registered version ``mv`` downloaded under ``dst``; returns it.

    An MLflow Model (source ``models:/<id>``): only its ``model/`` folder (the weights and tokenizer);
    a version registered before medmerge logged MLflow Models (source ``runs:/<id>/checkpoint``): that folder."""
    import mlflow

    from medmerge.tracking.connection import client

    model_id = getattr(mv, "model_id", None) or (mv.source.removeprefix("models:/")
                                                 if (mv.source or "").startswith("models:/m-") else None)
    if model_id:
        location = client(tracking_uri).get_logged_model(model_id).artifact_location.rstrip("/")
        uri = f"{location}/{MODEL_DIR}"
    else:
        uri = mv.source
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking_uri))
