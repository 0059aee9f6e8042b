"""Materializers: what ZenML stores for each medmerge artifact, and what its dashboard shows.

* ``CheckpointDir``: the whole checkpoint directory is copied into the artifact store (loading
  gives a ``CheckpointDir`` pointing at that copy); metadata: size, files, identity.
* ``SearchResults`` (every candidate's evaluation report): JSON, a markdown table, metadata.
* ``Frontier``: JSON, the frontier and trajectory PNGs, and the frontier table.
* ``SFTCheckpoint`` (a fine-tuned model): copied like ``CheckpointDir``; metadata: losses, steps.
* ``FinetuneSummary``: JSON, the learning-curve PNG and table, and the forgetting table.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, ClassVar

from zenml.enums import ArtifactType, VisualizationType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer

from medmerge.finetune import FinetuneSummary, SFTCheckpoint
from medmerge.selection.search import CheckpointDir, Frontier, SearchResults


def _write(path: str, text: str) -> None:
    with fileio.open(path, "w") as f:
        f.write(text)


def _dir_size(path: str) -> tuple[int, int]:
    """(number of files, total bytes) of a checkpoint directory's top level."""
    files = [os.path.join(path, f) for f in os.listdir(path) if os.path.isfile(os.path.join(path, f))]
    return len(files), sum(os.path.getsize(f) for f in files)


def _read(path: str) -> str:
    with fileio.open(path, "r") as f:
        return f.read()


class CheckpointDirMaterializer(BaseMaterializer):
    """A checkpoint directory (any pydantic model with a ``path``) copied into the artifact store."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (CheckpointDir,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL

    def save(self, data) -> None:
        target = os.path.join(self.uri, "checkpoint")
        fileio.makedirs(target)
        for name in sorted(os.listdir(data.path)):
            src = os.path.join(data.path, name)
            if os.path.isfile(src):
                fileio.copy(src, os.path.join(target, name), overwrite=True)
        _write(os.path.join(self.uri, "checkpoint.json"), data.model_dump_json())

    def load(self, data_type: type[Any]):
        meta = data_type.model_validate_json(_read(os.path.join(self.uri, "checkpoint.json")))
        stored = os.path.join(self.uri, "checkpoint")
        if os.path.isdir(stored):  # a local artifact store: use the copy in place
            return meta.model_copy(update={"path": stored})
        # an object store (s3://, gs://, ...): transformers and MLflow need a local directory
        local = tempfile.mkdtemp(prefix="medmerge-checkpoint-")
        for name in fileio.listdir(stored):
            fileio.copy(os.path.join(stored, str(name)), os.path.join(local, str(name)), overwrite=True)
        return meta.model_copy(update={"path": local})

    def extract_metadata(self, data) -> dict[str, Any]:
        files, size = _dir_size(data.path)
        return {"candidate": data.name, "identity": data.identity, "files": files, "bytes": size,
                "mlflow_run_id": data.run_id}


class SFTCheckpointMaterializer(CheckpointDirMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (SFTCheckpoint,)

    def extract_metadata(self, data: SFTCheckpoint) -> dict[str, Any]:
        _, size = _dir_size(data.path)
        meta = {"initialisation": data.init, "shots": data.shots, "n_examples": data.n_examples, "steps": data.steps,
                "train_loss": data.loss.mean, "bytes": size, "mlflow_run_id": data.run_id}
        return {k: v for k, v in meta.items() if v is not None}   # shots 0 trains nothing: no loss (ZenML refuses None)


class SearchResultsMaterializer(BaseMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (SearchResults,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS

    def save(self, data: SearchResults) -> None:
        _write(os.path.join(self.uri, "results.json"), data.model_dump_json(indent=2))

    def load(self, data_type: type[Any]) -> SearchResults:
        return SearchResults.model_validate_json(_read(os.path.join(self.uri, "results.json")))

    def save_visualizations(self, data: SearchResults) -> dict[str, VisualizationType]:
        rows = ["| candidate | Medical Avg | IF score | MLflow run |", "|---|---|---|---|"]
        for c in data.candidates:
            med = "" if c.report.medical_avg is None else f"{c.report.medical_avg:.4f}"
            ifs = "" if c.report.if_score is None else f"{c.report.if_score:.4f}"
            rows.append(f"| {c.name} | {med} | {ifs} | {c.run_id} |")
        path = os.path.join(self.uri, "reports.md")
        _write(path, "\n".join(rows) + "\n")
        return {path: VisualizationType.MARKDOWN}

    def extract_metadata(self, data: SearchResults) -> dict[str, Any]:
        meds = [c.report.medical_avg for c in data.candidates if c.report.medical_avg is not None]
        meta = {"candidates": len(data.candidates), "mlflow_parent_run_id": data.parent_run_id,
                "tracking_uri": data.tracking_uri}
        if meds:  # ZenML refuses a None metadata value (a medical5-only search has no Medical Avg)
            meta["best_medical_avg"] = max(meds)
        return meta


class _FiguresMaterializer(BaseMaterializer):
    """A pydantic result with ``figures`` ({key: png path}) and a text table: JSON, the PNGs and a
    Markdown table are stored; the dashboard shows the images and the table."""

    SKIP_REGISTRATION: ClassVar[bool] = True   # a base class: only its subclasses are registered
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.DATA_ANALYSIS
    JSON: ClassVar[str]
    MARKDOWN: ClassVar[str]

    def markdown(self, data) -> str:
        raise NotImplementedError

    def save(self, data) -> None:
        stored = {}
        for key, src in data.figures.items():
            if os.path.exists(src):
                dst = os.path.join(self.uri, f"{key}.png")
                fileio.copy(src, dst, overwrite=True)
                stored[key] = dst
        _write(os.path.join(self.uri, self.JSON), data.model_copy(update={"figures": stored}).model_dump_json())

    def load(self, data_type: type[Any]):
        return data_type.model_validate_json(_read(os.path.join(self.uri, self.JSON)))

    def save_visualizations(self, data) -> dict[str, VisualizationType]:
        out = {os.path.join(self.uri, f"{k}.png"): VisualizationType.IMAGE for k in data.figures}
        table = os.path.join(self.uri, self.MARKDOWN)
        _write(table, self.markdown(data))
        out[table] = VisualizationType.MARKDOWN
        return {p: v for p, v in out.items() if fileio.exists(p)}


class FrontierMaterializer(_FiguresMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (Frontier,)
    JSON, MARKDOWN = "frontier.json", "frontier.md"

    def markdown(self, data: Frontier) -> str:
        return "```\n" + data.table + "\n```\n"

    def extract_metadata(self, data: Frontier) -> dict[str, Any]:
        meta = {"knee": data.knee, "frontier": ", ".join(data.frontier), "near": len(data.near)}
        if data.hypervolume is not None:  # None without both parents; ZenML refuses None values
            meta["hypervolume"] = data.hypervolume
        return meta


class FinetuneSummaryMaterializer(_FiguresMaterializer):
    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (FinetuneSummary,)
    JSON, MARKDOWN = "summary.json", "learning_curves.md"

    def markdown(self, data: FinetuneSummary) -> str:
        return "```\n" + data.table + "\n```\n\n" + data.forgetting_table

    def extract_metadata(self, data: FinetuneSummary) -> dict[str, Any]:
        return {"versions": len(data.versions), "forgetting_gate_failures": sum(not g for g in data.gate.values())}
