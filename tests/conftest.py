"""Shared pytest fixtures, and where each test's caches and stores live (all explicit).

* ZenML's local store: one per session, in a fresh directory (``ZENML_CONFIG_PATH``, set below because
  ZenML reads it when first imported, which some test modules do at collection). Its step cache is keyed
  by each step's code, inputs and parameters, so a test gets a cached step only for a computation it (or
  a shared fixture) asked for with the very same configuration; tests that assert on cached steps run
  their configuration twice themselves. Tests that must not see any cached step say ``enable_cache: False``.
* medmerge's cache (``MEDMERGE_CACHE_DIR``: parents' hashes, evaluations, locks): a fresh one per test
  (``medmerge_cache``, autouse), so no test is served by another test's evaluations. NLTK's Punkt and
  WordNet data, built from the package's own files, are the same for every test: each test's cache links
  one session-wide ``nltk_data``. The demo sweeps (the same six or so candidates of the demo models, scored
  with :data:`DEMO_EVAL`) opt into one evaluation cache per session with ``demo_eval_cache``.
* The demo models: built once per machine and code version (``medmerge.demo.cache``, also what
  ``make demo`` copies), read only. ``MEDMERGE_TEST_DEMO_MODELS=DIR`` reads a ``medmerge demo-models``
  output instead.
* MLflow: ``mlflow_server`` is one server per session for every test that does not test a server's own
  start, stop or restart; tests give their experiments and registered models names of their own.
  ``demo_search`` is the one demo merge_search run the end-to-end, UI and serving tests assert on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from factory import DEMO_EVAL, DEMO_SWEEP

# Hermetic runs: nothing reaches a hub, and nothing is read from or written to the user's ~/.cache/medmerge
# (this default is what code running at collection sees; each test gets its own, below).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="medmerge-test-cache-"))
_NLTK_DATA = _SESSION_CACHE / "nltk_data"   # Punkt and WordNet, built from the package's files: one for all
_NLTK_DATA.mkdir()
os.environ["MEDMERGE_CACHE_DIR"] = str(_SESSION_CACHE)
os.environ["ZENML_CONFIG_PATH"] = tempfile.mkdtemp(prefix="medmerge-test-zenml-")
os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("AUTO_OPEN_DASHBOARD", "false")
# MLflow 3's server starts a job runner and seven huey consumers for its GenAI jobs, which medmerge never
# submits: eight Python processes' start-up per server on 2 cores
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def medmerge_cache(tmp_path_factory, monkeypatch) -> Path:
    """This test's own ``MEDMERGE_CACHE_DIR`` (subprocesses the test starts inherit it)."""
    cache = tmp_path_factory.mktemp("medmerge-cache")
    (cache / "nltk_data").symlink_to(_NLTK_DATA, target_is_directory=True)
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def demo_eval_cache(tmp_path_factory) -> Path:
    """One ``MEDMERGE_CACHE_DIR`` for the session's demo sweeps (set it with ``monkeypatch.setenv``)."""
    cache = tmp_path_factory.mktemp("demo-eval-cache")
    (cache / "nltk_data").symlink_to(_NLTK_DATA, target_is_directory=True)
    return cache


@pytest.fixture(scope="session")
def demo_models() -> dict[str, Path]:
    """The demo checkpoints ``{"base", "clinical", "instruct"} -> Path``: read only, never written."""
    from medmerge.demo.cache import cached_demo_models

    prebuilt = os.environ.get("MEDMERGE_TEST_DEMO_MODELS")   # a directory `medmerge demo-models` wrote
    if prebuilt:
        return {n: Path(prebuilt).resolve() / n for n in ("base", "clinical", "instruct")}
    return cached_demo_models(seed=0, quiet=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One MLflow server (sqlite store, served artifacts) on a free loopback port for the session:
    ``medmerge.tracking.server.ServerInfo`` (``.uri``). Not for tests of a server's own lifecycle."""
    from medmerge.tracking.server import start, stop

    state = tmp_path_factory.mktemp("mlflow-session")
    info = start(state, port=0, timeout=300)  # a busy shared machine starts it slowly
    yield info
    stop(state)


@pytest.fixture(scope="session")
def demo_search(demo_models, mlflow_server, demo_eval_cache, tmp_path_factory) -> dict:
    """The session's demo merge_search run: linear and slerp at 0, 0.5 and 1 on the demo models
    (:data:`DEMO_SWEEP`, :data:`DEMO_EVAL`), picks per method, the knee promoted, logged to
    ``mlflow_server`` as experiment ``e2e`` and registered model ``e2e-model``. ``{"out": what
    pipelines.merge_search.run returned, "config", "selected", "uri", "model", "experiment"}``."""
    import yaml

    from pipelines.merge_search import run

    root = tmp_path_factory.mktemp("demo-search")
    sweep = root / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                     "instruct": str(demo_models["instruct"]), **DEMO_SWEEP}))
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {
        "sweep": str(sweep), **DEMO_EVAL, "output_dir": str(root / "selected"), "registered_model": "e2e-model",
        "experiment": "e2e", "tracking_uri": mlflow_server.uri, "picks": "best_per_method", "promote": "knee"}}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMERGE_CACHE_DIR", str(demo_eval_cache))
        out = run(str(cfg))
    return {"out": out, "config": cfg, "selected": root / "selected", "uri": mlflow_server.uri,
            "model": "e2e-model", "experiment": "e2e"}


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
            if CI:
                pytest.fail(f"{reason}: CI must have it", pytrace=False)
            pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI no test may skip for something missing: such a skip is a failure naming the reason (CI's
    machine is set up by ``make install``, which installs every test dependency). A ``skipif`` on the
    platform (the no-CUDA refusal where CUDA is present) is the one kind of skip CI keeps."""
    outcome = yield
    report = outcome.get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail") and not _hardware_skip(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({reason}): CI must run every test; make install installs what they need"


def pytest_collectreport(report):
    """The same for a whole module skipped at collection (``pytest.importorskip`` at module level)."""
    if CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI ({reason}): CI must run every test; make install installs what they need"


def _hardware_skip(item) -> bool:
    """A ``skipif`` whose condition held: a condition on the platform, written where the test is."""
    return any(m.args and m.args[0] is True for m in item.iter_markers(name="skipif"))


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
