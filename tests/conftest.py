"""Shared pytest fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Hermetic runs: nothing reaches a hub, and caches (hashes, evaluations, the Punkt model) live in a
# fresh directory rather than the user's ~/.cache/medmerge.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["MEDMERGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="medmerge-test-cache-")
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="medmerge-test-zenml-")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    """The demo checkpoints ``{"base", "clinical", "instruct"} -> Path``, built once per session (~30 s)."""
    from medmerge.demo import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo"), seed=0, quiet=True)
