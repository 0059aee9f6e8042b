"""ZenML pipelines: compositions of the steps in ``steps/`` (no logic of their own)."""
