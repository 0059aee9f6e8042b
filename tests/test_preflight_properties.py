"""Property tests of the pipelines' preflight (hypothesis, bounded): the demo run configurations of
zenml_config/, mutated at random (a value replaced by a number, a non-finite float, a boolean, a string, a list,
a mapping or nothing; a key deleted or misspelt), are either accepted or refused with one-line problems that
name the file, never with another exception; and checking writes nothing. No pipeline runs."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from factory import make_family
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmerge.preflight import check_finetune, check_search

ROOT = Path(__file__).resolve().parents[1]
# the fast tier draws a fixed 25 examples per config; MEDMERGE_PROPERTY_EXAMPLES=N draws N random ones
EXAMPLES = int(os.environ.get("MEDMERGE_PROPERTY_EXAMPLES", "0"))
CONFIGS = {"merge_search_demo.yaml": check_search, "merge_search_optuna.yaml": check_search,
           "merge_search_hierarchical.yaml": check_search, "finetune_demo.yaml": check_finetune}


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory) -> Path:
    """A checkout as make demo leaves it: demo_out/models/{base,clinical,instruct} (tiny) and sweep.yml."""
    repo = tmp_path_factory.mktemp("repo")
    fam = make_family(repo / "demo_out" / "models")
    d = repo / "demo_out" / "models"
    for name, src in (("clinical", "m0"), ("instruct", "m1")):
        fam[src].rename(d / name)
    (d / "sweep.yml").write_text(yaml.safe_dump({"clinical": str(d / "clinical"), "instruct": str(d / "instruct"),
                                                 "base": str(d / "base"), "methods": ["linear", "slerp"],
                                                 "ratios": [0.0, 0.5, 1.0]}))
    return repo


@contextmanager
def inside(d: Path):
    old = os.getcwd()
    os.chdir(d)
    try:
        yield
    finally:
        os.chdir(old)


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st_ = (Path(dirpath) / name).lstat()
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st_.st_size, st_.st_mtime_ns)
    return out


def locations(obj, path=()):
    """Every location in a parsed YAML document (mapping keys and list indices), the root included."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from locations(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from locations(v, path + (i,))


VALUES = st.one_of(
    st.integers(-3, 700), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-./:@% 0123456789", max_size=12),
    st.sampled_from([".", "..", "/", "sample", "knee", "none", "full", "auto", "linear", "clinical", "models:/x@y",
                     "http://", "ftp://host", "sqlite:///nonexistent/dir/x.db", "demo_out/models/clinical"]),
    st.lists(st.one_of(st.integers(-1, 3), st.text(max_size=4), st.floats(0, 1)), max_size=3),
    st.dictionaries(st.sampled_from(["low", "high", "name", "path", "x"]), st.one_of(st.floats(-1, 2), st.text(max_size=4)),
                    max_size=2),
)


@st.composite
def mutations(draw, config: dict) -> dict:
    """``config`` (a run config's ``parameters.config``) with one to three random changes."""
    cfg = copy.deepcopy(config)
    for _ in range(draw(st.integers(1, 3))):
        where = [p for p in locations(cfg) if p]
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = cfg
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        op = draw(st.sampled_from(["set", "set", "delete", "misspell"]))
        if op == "set" or isinstance(parent, list):
            parent[key] = draw(VALUES)
        elif op == "delete":
            del parent[key]
        else:
            value = parent.pop(key)
            parent[draw(st.sampled_from([f"{key}s", str(key)[:-1] or "x", f"_{key}", str(key).upper()]))] = value
    return cfg


def check_is_clean(config_name: str, data, demo_repo: Path, tmp_path_factory) -> None:
    doc = yaml.safe_load((ROOT / "zenml_config" / config_name).read_text())
    doc["parameters"]["config"] = data.draw(mutations(doc["parameters"]["config"]))
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    before = tree(demo_repo)
    with inside(demo_repo):
        cfg, lines = CONFIGS[config_name](path)   # any exception other than a returned problem fails the test
    assert tree(demo_repo) == before
    assert (cfg is None) == bool(lines), lines
    for line in lines:
        assert isinstance(line, str) and line.strip() and "\n" not in line, line
        assert str(path) in line, line
        assert "Traceback" not in line and "validation error" not in line and "errors.pydantic.dev" not in line, line


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_the_unmutated_demo_config_passes(config_name, demo_repo):
    with inside(demo_repo):
        cfg, lines = CONFIGS[config_name](ROOT / "zenml_config" / config_name)
    assert lines == [] and cfg is not None


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@settings(max_examples=EXAMPLES or 25, deadline=None, derandomize=not EXAMPLES,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_demo_config_is_accepted_or_refused_in_lines(config_name, data, demo_repo, tmp_path_factory):
    check_is_clean(config_name, data, demo_repo, tmp_path_factory)
