#!/usr/bin/env bash
# Register the remote ZenML stack `medmerge_remote`: Kubernetes orchestrator, S3 artifact store,
# container registry, image builder, and the team's MLflow server as experiment tracker + model registry.
#
#   zenml login https://zenml.example.com        # remote orchestrators need a ZenML server, not the local store
#   zenml secret create medmerge_mlflow --username=... --password=...   # MLflow basic auth (never in the repo)
#   zenml secret create medmerge_hf --HF_TOKEN=hf_...                   # Hub token for gated parents (env var in pods)
#   MEDMERGE_K8S_CONTEXT=gke_medmerge MEDMERGE_ARTIFACT_URI=s3://my-bucket/medmerge \
#   MEDMERGE_REGISTRY_URI=ghcr.io/my-org MEDMERGE_MLFLOW_URI=https://mlflow.example.com \
#     bash zenml_config/remote/register_remote_stack.sh
#   zenml stack set medmerge_remote
#
# Every value comes from the environment; no credential is ever written here or passed on the command line:
#   MEDMERGE_K8S_CONTEXT     kubeconfig context of the cluster (`kubectl config get-contexts`); or
#   MEDMERGE_K8S_INCLUSTER=1 when registering from a pod inside the cluster
#   MEDMERGE_K8S_NAMESPACE   namespace for the pipeline pods (default: medmerge)
#   MEDMERGE_ARTIFACT_URI    s3://bucket/prefix for artifacts (MinIO / any S3 API: also MEDMERGE_S3_ENDPOINT)
#   MEDMERGE_S3_SECRET       optional ZenML secret (aws_access_key_id, aws_secret_access_key); without it the
#                            pods use ambient credentials (IRSA / workload identity / instance profile)
#   MEDMERGE_REGISTRY_URI    container registry the cluster can pull from (docker login to it first)
#   MEDMERGE_IMAGE_BUILDER   ZenML image-builder flavor (default: local, i.e. the Docker daemon here)
#   MEDMERGE_MLFLOW_URI      the MLflow tracking server (http(s)://...)
#   MEDMERGE_MLFLOW_SECRET   ZenML secret with keys username/password (default: medmerge_mlflow)
# Re-running replaces the stack and its components (same names). The stack is not activated.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
if [ -z "${ZENML:-}" ]; then  # the zenml CLI: $ZENML, else the one on PATH, else the virtualenv's
  if command -v zenml >/dev/null; then ZENML=zenml; else ZENML="$(dirname "$PY")/zenml"; fi
fi

die() { echo "register_remote_stack: $*" >&2; exit 2; }
CTX=${MEDMERGE_K8S_CONTEXT:-}
INCLUSTER=${MEDMERGE_K8S_INCLUSTER:-0}
NS=${MEDMERGE_K8S_NAMESPACE:-medmerge}
ARTIFACTS=${MEDMERGE_ARTIFACT_URI:-}
S3_ENDPOINT=${MEDMERGE_S3_ENDPOINT:-}
S3_SECRET=${MEDMERGE_S3_SECRET:-}
REGISTRY=${MEDMERGE_REGISTRY_URI:-}
BUILDER=${MEDMERGE_IMAGE_BUILDER:-local}
MLFLOW=${MEDMERGE_MLFLOW_URI:-}
MLFLOW_SECRET=${MEDMERGE_MLFLOW_SECRET:-medmerge_mlflow}

[ -n "$CTX" ] || [ "$INCLUSTER" = 1 ] || die "set MEDMERGE_K8S_CONTEXT (a kubeconfig context) or MEDMERGE_K8S_INCLUSTER=1"
case "$ARTIFACTS" in s3://?*) ;; *) die "set MEDMERGE_ARTIFACT_URI to s3://bucket/prefix" ;; esac
[ -n "$REGISTRY" ] || die "set MEDMERGE_REGISTRY_URI (e.g. ghcr.io/my-org, <account>.dkr.ecr.<region>.amazonaws.com)"
case "$MLFLOW" in http://?*|https://?*) ;; *) die "set MEDMERGE_MLFLOW_URI to the MLflow server (http(s)://...)" ;; esac
for s in "$MLFLOW_SECRET" ${S3_SECRET:+"$S3_SECRET"}; do
  $ZENML secret get "$s" >/dev/null 2>&1 || die "ZenML secret '$s' not found: create it first (see zenml_config/README.md)"
done

# Replace an earlier registration (or, with MEDMERGE_REPLACE=1, leftovers of one that stopped half way).
if [ "${MEDMERGE_REPLACE:-0}" = 1 ] || $ZENML stack describe medmerge_remote >/dev/null 2>&1; then
  $ZENML stack delete medmerge_remote -y >/dev/null 2>&1 || true
  for c in "orchestrator medmerge_k8s" "artifact-store medmerge_s3" "container-registry medmerge_registry" \
           "image-builder medmerge_image_builder" "experiment-tracker medmerge_mlflow_remote" \
           "model-registry medmerge_mlflow_remote_registry"; do
    $ZENML ${c% *} delete "${c#* }" >/dev/null 2>&1 || true   # e.g. zenml orchestrator delete medmerge_k8s
  done
fi

k8s_args=(--kubernetes_namespace="$NS")
if [ "$INCLUSTER" = 1 ]; then k8s_args+=(--incluster=True); else k8s_args+=(--kubernetes_context="$CTX"); fi
$ZENML orchestrator register medmerge_k8s --flavor=kubernetes "${k8s_args[@]}"

s3_args=(--path="$ARTIFACTS")
[ -n "$S3_SECRET" ] && s3_args+=(--authentication_secret="$S3_SECRET")
[ -n "$S3_ENDPOINT" ] && s3_args+=(--client_kwargs="{\"endpoint_url\": \"$S3_ENDPOINT\"}")
$ZENML artifact-store register medmerge_s3 --flavor=s3 "${s3_args[@]}"

$ZENML container-registry register medmerge_registry --flavor=default --uri="$REGISTRY"
$ZENML image-builder register medmerge_image_builder --flavor="$BUILDER"
# {{secret.key}} references are resolved by ZenML at run time (in the pods too): the repo holds only names.
$ZENML experiment-tracker register medmerge_mlflow_remote --flavor=mlflow --tracking_uri="$MLFLOW" \
  --tracking_username="{{$MLFLOW_SECRET.username}}" --tracking_password="{{$MLFLOW_SECRET.password}}"
$ZENML model-registry register medmerge_mlflow_remote_registry --flavor=mlflow
$ZENML stack register medmerge_remote -o medmerge_k8s -a medmerge_s3 -c medmerge_registry -i medmerge_image_builder \
  -e medmerge_mlflow_remote -r medmerge_mlflow_remote_registry
echo "registered stack: medmerge_remote (Kubernetes ${CTX:-in-cluster}/$NS, artifacts $ARTIFACTS, MLflow $MLFLOW)"
echo "activate it with: zenml stack set medmerge_remote"
