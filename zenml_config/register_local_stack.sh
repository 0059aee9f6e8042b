#!/usr/bin/env bash
# Register a local ZenML stack whose experiment tracker and model registry are the MLflow server
# started by `medmerge server start` (or the one MLFLOW_TRACKING_URI names), and make it active.
#   make stack        # or: bash zenml_config/register_local_stack.sh [TRACKING_URI]
# Credentials come from the environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) when the
# server runs with basic auth; ZenML needs some value for a remote URI, so a placeholder is used otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
STATE=${MEDMERGE_SERVER_STATE:-.medmerge/mlflow}   # where `medmerge server start` keeps its state
URI=${1:-${MLFLOW_TRACKING_URI:-$($PY -c "from medmerge.tracking.server import status; i = status('$STATE'); print(i.uri if i else '')")}}
if [ -z "$URI" ]; then echo "no MLflow server: run 'medmerge server start' first" >&2; exit 2; fi
ZENML="$PY -m zenml.cli.cli"
command -v zenml >/dev/null && ZENML=zenml || ZENML="$(dirname "$PY")/zenml"
USER_=${MLFLOW_TRACKING_USERNAME:-medmerge}
PASS_=${MLFLOW_TRACKING_PASSWORD:-unused}
$ZENML experiment-tracker delete medmerge_mlflow_tracker >/dev/null 2>&1 || true
$ZENML model-registry delete medmerge_mlflow_registry >/dev/null 2>&1 || true
$ZENML stack delete medmerge_local -y >/dev/null 2>&1 || true
$ZENML experiment-tracker register medmerge_mlflow_tracker --flavor=mlflow \
  --tracking_uri="$URI" --tracking_username="$USER_" --tracking_password="$PASS_"
$ZENML model-registry register medmerge_mlflow_registry --flavor=mlflow
$ZENML stack register medmerge_local -o default -a default -e medmerge_mlflow_tracker -r medmerge_mlflow_registry --set
echo "active stack: medmerge_local (MLflow at $URI)"
