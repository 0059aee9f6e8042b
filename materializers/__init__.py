"""ZenML materializers for medmerge artifacts: checkpoints, evaluation reports, frontiers, SFT summaries."""

from materializers.medmerge_materializers import (  # noqa: F401  (import registers them with ZenML)
    CheckpointDirMaterializer,
    FinetuneSummaryMaterializer,
    FrontierMaterializer,
    SearchResultsMaterializer,
    SFTCheckpointMaterializer,
)
