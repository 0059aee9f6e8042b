"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> dict[str, Path]:
    """The demo checkpoints ``{"base", "clinical", "instruct"} -> Path``, built once per session (~30 s)."""
    from medmerge.demo import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo"), seed=0, quiet=True)
