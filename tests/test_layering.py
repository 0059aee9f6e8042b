"""The core never reaches up: no module of ``medmerge/`` imports ZenML or the pipeline layer
(``pipelines``, ``steps``, ``materializers``), in source or at run time. ``medmerge schedule`` starts
``python -m pipelines.schedule`` as a separate process instead (tests/test_retrain.py).

MLflow is reached only through ``medmerge/tracking/``, in meaning as well as in imports: outside it no module
imports MLflow, reads an MLflow entity's attributes (``.info.run_id``, ``.data.metrics``, ``current_stage``, ...:
tracking/ hands out records such as ``runs.RunRecord`` and ``registry.Version``), names an ``MLFLOW_*``
environment variable, or rebuilds a run handle by hand from a record's ``parent_run_id`` (the record's
``parent_run()`` gives it)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "medmerge"
UPPER = {"zenml", "pipelines", "steps", "materializers"}
TRACKING = CORE / "tracking"


def outside_tracking() -> list[Path]:
    """Every module of ``medmerge/`` but ``medmerge/tracking/``, and of the pipeline layer."""
    files = [f for f in sorted(CORE.rglob("*.py")) if not f.is_relative_to(TRACKING)]
    return files + [f for d in sorted(UPPER - {"zenml"}) for f in sorted((ROOT / d).rglob("*.py"))]


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


CLIENT_MODULES = {"registry", "connection"}   # tracking/'s modules that hand out an MlflowClient


def mlflow_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` for every import of MLflow, every ``registry.client(...)``/``connection.client(...)``
    call and every import of that ``client`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hits = [(line, n) for line, n in imported_modules(path) if n.split(".")[0] == "mlflow"]
    hits += [(node.lineno, f"{node.func.value.id}.client()") for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "client"
             and isinstance(node.func.value, ast.Name) and node.func.value.id in CLIENT_MODULES]
    hits += [(node.lineno, f"{node.module} import client") for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and node.module in {f"medmerge.tracking.{m}" for m in CLIENT_MODULES}
             and any(a.name == "client" for a in node.names)]
    return [f"{path.relative_to(root)}:{line}: {n}" for line, n in sorted(hits)]


# Attribute names only MLflow's entities have: Run.info / Run.data, ModelVersion, RegisteredModel, Experiment.
RUN_INFO = {"run_id", "run_name", "status", "experiment_id", "artifact_uri", "start_time", "end_time", "user_id",
            "lifecycle_stage", "run_uuid"}
RUN_DATA = {"metrics", "params", "tags"}
ENTITY_ONLY = {"current_stage", "latest_versions", "to_dictionary", "lifecycle_stage", "last_updated_timestamp",
               "creation_timestamp", "artifact_location", "run_link"}
MLFLOW_VARIABLE = re.compile(r"MLFLOW_[A-Z0-9_]+")


def entity_reads(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` for every read of an MLflow entity's attribute in ``path``: ``X.info.<field>`` for a
    field of MLflow's ``RunInfo``, ``X.data.metrics|params|tags``, and the names only entities have."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        inner = node.value.attr if isinstance(node.value, ast.Attribute) else None
        if (inner == "info" and node.attr in RUN_INFO) or (inner == "data" and node.attr in RUN_DATA):
            hits.append((node.lineno, f".{inner}.{node.attr}"))
        elif node.attr in ENTITY_ONLY:
            hits.append((node.lineno, f".{node.attr}"))
    return [f"{path.relative_to(root)}:{line}: {what}" for line, what in sorted(hits)]


def mlflow_variables(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: NAME`` for every string that is the name of an ``MLFLOW_*`` environment variable (a message
    or docstring that mentions one is no hit)."""
    return [f"{path.relative_to(root)}:{node.lineno}: {node.value}"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and MLFLOW_VARIABLE.fullmatch(node.value)]


def rebuilt_handles(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: Run(...)`` for every ``Run(...)``/``runs.Run(...)`` built from some record's
    ``.parent_run_id`` (the record's ``parent_run()`` is the one place that does it)."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        if name == "Run" and any(isinstance(a, ast.Attribute) and a.attr == "parent_run_id"
                                 for a in [*node.args, *(k.value for k in node.keywords)]):
            hits.append(node.lineno)
    return [f"{path.relative_to(root)}:{line}: Run(...)" for line in hits]


@pytest.mark.parametrize("check, source, hits", [
    (upward_imports, "import os\nfrom zenml.client import Client\n\ndef f():\n    import pipelines.retrain\n"
                     "    from steps import x\n    from .io import atomic\n    import stepsize\n",
     ["probe.py:2: zenml.client", "probe.py:5: pipelines.retrain", "probe.py:6: steps"]),
    (mlflow_uses, "import mlflow\n\ndef f(uri):\n    from mlflow.tracking import MlflowClient\n"
                  "    c = registry.client(uri)\n    return runs.Run(uri, 'x')\n\n"
                  "def g(uri):\n    from medmerge.tracking.connection import client, RegistryError\n"
                  "    return connection.client(uri), registry.check_reachable(uri)\n",
     ["probe.py:1: mlflow", "probe.py:4: mlflow.tracking", "probe.py:5: registry.client()",
      "probe.py:9: medmerge.tracking.connection import client", "probe.py:10: connection.client()"]),
    (entity_reads, "def f(run, mv, rec, cfg):\n    a = run.info.run_id, run.data.metrics['x'], run.data.tags\n"
                   "    b = mv.current_stage, c.get_registered_model('m').latest_versions\n"
                   "    ok = rec.run_id, rec.status, rec.metrics, rec.tags, cfg.data.path, run.info.size\n",
     ["probe.py:2: .data.metrics", "probe.py:2: .data.tags", "probe.py:2: .info.run_id", "probe.py:3: .current_stage",
      "probe.py:3: .latest_versions"]),
    (mlflow_variables, "import os\nos.environ.setdefault('MLFLOW_HTTP_REQUEST_TIMEOUT', '60')\n"
                       "uri = os.environ.get(\"MLFLOW_TRACKING_URI\")\n"
                       "raise SystemExit('set MLFLOW_TRACKING_URI, or pass --tracking-uri')\n",
     ["probe.py:2: MLFLOW_HTTP_REQUEST_TIMEOUT", "probe.py:3: MLFLOW_TRACKING_URI"]),
    (rebuilt_handles, "def f(results, uri, rid):\n    a = runs.Run(results.tracking_uri, results.parent_run_id)\n"
                      "    b = Run(uri, run_id=results.parent_run_id)\n    return runs.Run(uri, rid), results.parent_run()\n",
     ["probe.py:2: Run(...)", "probe.py:3: Run(...)"]),
])
def test_the_checks_see_what_they_look_for(tmp_path, check, source, hits):
    (tmp_path / "probe.py").write_text(source)
    assert check(tmp_path / "probe.py", tmp_path) == hits


def test_only_medmerge_tracking_talks_to_mlflow():
    """The phases (and the steps and pipelines above them) hold runs.Run handles and registry functions; MLflow
    itself is reached only from medmerge/tracking/ (one owner for a run's life)."""
    files = outside_tracking()
    assert len(files) > 60 and any(f.is_relative_to(ROOT / "steps") for f in files)
    assert [hit for f in files for hit in mlflow_uses(f)] == []


@pytest.mark.parametrize("check", [entity_reads, mlflow_variables, rebuilt_handles])
def test_the_tracking_boundary_holds_in_meaning(check):
    """Outside medmerge/tracking/: no MLflow entity's attributes are read (tracking/ returns records), no
    MLFLOW_* variable is named (tracking/ sets and reads them), and no run handle is rebuilt from a record."""
    assert [hit for f in outside_tracking() for hit in check(f)] == []


# ------------------------------------------------------------------------------------------------
# the layout by phase: merge -> evaluation -> selection -> finetune -> ops, no import cycle
# ------------------------------------------------------------------------------------------------
# A phase imports itself and earlier phases only. generation/ is the fine-tuned models' generation and
# scoring (finetune's phase). The support packages (io/, runtime/ and errors) import no phase; tracking/
# reads the merge's model card and the evaluation's report formats, nothing later.
PHASES = {"merge": 1, "evaluation": 2, "selection": 3, "finetune": 4, "generation": 4, "ops": 5}
SUPPORT_MAY_IMPORT = {"io": set(), "runtime": set(), "errors": set(), "tracking": {"merge", "evaluation"}}


def module_graph(core: Path = CORE) -> dict[str, set[str]]:
    """``module -> the medmerge modules it imports when it runs`` (any depth, functions too; an import under
    ``if TYPE_CHECKING:`` is the type checker's, not a run's, and does not count). A submodule importing its
    own package is not an edge."""
    mods = {}
    for f in sorted(core.rglob("*.py")):
        parts = list(f.relative_to(core.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        tree = ast.parse(f.read_text(encoding="utf-8"))
        typing_only = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                       for b in n.body for x in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t) if t.split(".")[0] == core.name else None
                if r and r != m and not m.startswith(r + "."):
                    graph[m].add(r)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                out.append(sorted([v, *comp]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def phase_violations(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a later phase by an earlier one, or of a phase a support package may not read."""
    def top(m: str) -> str | None:
        return m.split(".")[1] if "." in m else None

    bad = []
    for a, deps in sorted(graph.items()):
        for b in sorted(deps):
            pa, pb = top(a), top(b)
            if pb not in PHASES:
                continue
            if (pa in PHASES and PHASES[pb] > PHASES[pa]) or (pa in SUPPORT_MAY_IMPORT and pb not in SUPPORT_MAY_IMPORT[pa]):
                bad.append(f"{a} -> {b}")
    return bad


def test_the_graph_checks_see_cycles_and_upward_imports(tmp_path):
    pkg = tmp_path / "medmerge"
    for rel, text in {"__init__.py": "", "merge/__init__.py": "", "selection/__init__.py": "", "io/__init__.py": "",
                      "merge/engine.py": "def f():\n    from medmerge.merge.methods import x\n",
                      "merge/methods.py": "from medmerge.merge import engine\nfrom typing import TYPE_CHECKING\n"
                                          "if TYPE_CHECKING:\n    from medmerge.selection.search import S\n",
                      "merge/card.py": "from medmerge.selection import search\n",
                      "selection/search.py": "from medmerge.merge.engine import f\n",
                      "io/atomic.py": "import medmerge.merge.card\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = module_graph(pkg)
    assert cycles(graph) == [["medmerge.merge.engine", "medmerge.merge.methods"]]   # card -> search -> engine: no cycle
    assert "medmerge.selection.search" not in graph["medmerge.merge.methods"]    # TYPE_CHECKING only
    assert phase_violations(graph) == ["medmerge.io.atomic -> medmerge.merge.card",
                                       "medmerge.merge.card -> medmerge.selection.search"]


def test_medmerge_has_no_import_cycle():
    """Function-level imports included: a cycle hidden in a function is still two modules that need each other."""
    graph = module_graph()
    assert len(graph) > 50
    assert cycles(graph) == []


def test_phases_import_only_earlier_phases():
    assert {p for p in PHASES if (CORE / p / "__init__.py").is_file()} == set(PHASES)
    assert phase_violations(module_graph()) == []
