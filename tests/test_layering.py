"""The core never reaches up: no module of ``medmerge/`` imports ZenML or the pipeline layer
(``pipelines``, ``steps``, ``materializers``), in source or at run time. ``medmerge schedule`` starts
``python -m pipelines.schedule`` as a separate process instead (tests/test_retrain.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "medmerge"
UPPER = {"zenml", "pipelines", "steps", "materializers"}


def imported_modules(path: Path):
    """``(line, module)`` for every absolute import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def upward_imports(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: module`` (file relative to ``root``) for every absolute import in ``path`` whose top-level
    package is in UPPER."""
    return [f"{path.relative_to(root)}:{line}: {n}" for line, n in imported_modules(path) if n.split(".")[0] in UPPER]


def test_no_core_module_imports_zenml_or_the_pipeline_layer():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 50
    found = [hit for f in files for hit in upward_imports(f)]
    assert found == []


def test_importing_the_core_loads_no_zenml():
    """Every module of the package imported in a fresh interpreter leaves ZenML and the pipeline layer unloaded."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import medmerge\n"
        "names = [m.name for m in pkgutil.walk_packages(medmerge.__path__, 'medmerge.')]\n"
        "for n in names:\n"
        "    importlib.import_module(n)\n"
        f"up = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(UPPER)!r})\n"
        "print(json.dumps({'imported': len(names), 'upper': up}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["imported"] > 50 and got["upper"] == []


def mlflow_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` for every import of MLflow and every ``registry.client(...)`` call in ``path``."""
    hits = [(line, n) for line, n in imported_modules(path) if n.split(".")[0] == "mlflow"]
    hits += [(node.lineno, "registry.client()") for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client"
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "registry"]
    return [f"{path.relative_to(root)}:{line}: {n}" for line, n in sorted(hits)]


@pytest.mark.parametrize("check, source, hits", [
    (upward_imports, "import os\nfrom zenml.client import Client\n\ndef f():\n    import pipelines.retrain\n"
                     "    from steps import x\n    from .io import atomic\n    import stepsize\n",
     ["probe.py:2: zenml.client", "probe.py:5: pipelines.retrain", "probe.py:6: steps"]),
    (mlflow_uses, "import mlflow\n\ndef f(uri):\n    from mlflow.tracking import MlflowClient\n"
                  "    c = registry.client(uri)\n    return runs.Run(uri, 'x')\n",
     ["probe.py:1: mlflow", "probe.py:4: mlflow.tracking", "probe.py:5: registry.client()"]),
])
def test_the_checks_see_what_they_look_for(tmp_path, check, source, hits):
    (tmp_path / "probe.py").write_text(source)
    assert check(tmp_path / "probe.py", tmp_path) == hits


def test_only_medmerge_tracking_talks_to_mlflow():
    """The phases hold runs.Run handles and registry functions; MLflow itself is reached only from
    medmerge/tracking/ (one owner for a run's life)."""
    files = [f for f in sorted(CORE.rglob("*.py")) if "tracking" not in f.relative_to(CORE).parts]
    assert len(files) > 40
    assert [hit for f in files for hit in mlflow_uses(f)] == []
