"""MLflow: the local tracking server's lifecycle, run logging, the model registry and promotion."""
