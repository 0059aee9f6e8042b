# The image the pipeline steps run in. CPU by default:
#   docker build -t medmerge .
# CUDA torch instead of the CPU build:
#   docker build -t medmerge:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_DISABLE_TELEMETRY=1
# wordnet-base: METEOR's WordNet, read offline by NLTK
RUN apt-get update \
 && apt-get install -y --no-install-recommends wordnet-base git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, from the chosen index, so the dependency resolver does not pick another build
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
COPY pyproject.toml README.md ./
COPY medmerge ./medmerge
RUN pip install '.[pipelines]'
COPY pipelines ./pipelines
COPY steps ./steps
COPY materializers ./materializers
COPY zenml_config ./zenml_config

RUN useradd --create-home medmerge
# The user the image ends as. ZenML builds its own layer on top of this image (pip/uv install, COPY,
# chmod) and needs root for that: the remote run config passes APP_USER=root and sets
# DockerSettings.user=medmerge, so the steps still run unprivileged.
ARG APP_USER=medmerge
USER ${APP_USER}
ENTRYPOINT ["medmerge"]
CMD ["--help"]
