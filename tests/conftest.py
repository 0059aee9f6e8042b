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

    prebuilt = os.environ.get("MEDMERGE_TEST_DEMO_MODELS")   # a directory `medmerge demo-models` wrote (a busy
    if prebuilt:                                             # machine builds them slowly); read, never written
        return {n: Path(prebuilt).resolve() / n for n in ("base", "clinical", "instruct")}
    return build_demo_models(tmp_path_factory.mktemp("demo"), seed=0, quiet=True)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "shared_data(*paths): needs these paths under ../shared/data; skipped with the reason on a "
        "clone without it, a failure under CI (CI=true), which must have it")


def pytest_runtest_setup(item):
    from factory import SHARED_DATA

    for mark in item.iter_markers(name="shared_data"):
        missing = [p for p in (mark.args or (".",)) if not (SHARED_DATA / p).exists()]
        if missing:
            reason = f"needs the shared data {SHARED_DATA / missing[0]} (../shared/data beside the repository)"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"{reason}: CI must have it", pytrace=False)
            pytest.skip(reason)


@pytest.fixture
def parent_reads(monkeypatch):
    """Every byte range read from a safetensors file through medmerge's reader, whole tensors and row
    blocks alike: ``{resolved file path: [(start, stop), ...]}`` (offsets into the data section)."""
    from collections import defaultdict

    from medmerge.io.checkpoint import SafetensorsFile

    reads: dict[Path, list[tuple[int, int]]] = defaultdict(list)
    real = SafetensorsFile._read

    def counting_read(self, offset, nbytes):
        reads[self.path.resolve()].append((offset, offset + nbytes))
        return real(self, offset, nbytes)

    monkeypatch.setattr(SafetensorsFile, "_read", counting_read)
    return reads
