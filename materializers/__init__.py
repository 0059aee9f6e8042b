"""ZenML materializers for medmerge artifacts: checkpoint directories, evaluation reports, frontiers."""

from materializers.medmerge_materializers import (  # noqa: F401  (import registers them with ZenML)
    CheckpointDirMaterializer,
    FrontierMaterializer,
    SearchResultsMaterializer,
)
