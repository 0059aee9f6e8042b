"""ZenML materializers for medmerge artifacts: checkpoint directories, evaluation reports, frontiers."""
