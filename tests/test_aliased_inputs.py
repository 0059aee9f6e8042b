"""Holes a new user fell into, through the command line: an output directory that is, contains or lies inside
an input model (with --overwrite too), config files that are not text, and two runs of one configuration at
once. Each refusal exits 2 with one line naming the problem, and the user's models are untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from factory import make_family

from medmerge.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


def digest_tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def linear(a: Path, b: Path) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                                                 {"model": str(b), "parameters": {"weight": 0.5}}]}


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("where,words", [
    (lambda m: m["m0"], "is the input model"),
    (lambda m: m["m0"] / "sub", "lies inside the input model"),
    (lambda m: m["m0"].parent, "contains the input model"),
])
def test_merge_refuses_destination_aliasing_a_parent(fam, tmp_path, capsys, where, words):
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(linear(fam["m0"], fam["m1"])))
    before = {k: digest_tree(v) for k, v in fam.items()}
    code = main(["merge", str(cfg), str(where(fam)), "--overwrite", "-q"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and words in line and str(fam["m0"]) in line
    assert {k: digest_tree(v) for k, v in fam.items()} == before  # every parent byte for byte
    assert not list(fam["m0"].parent.rglob(".medmerge-tmp-*"))


def test_merge_refuses_a_symlink_to_a_parent(fam, tmp_path, capsys):
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(linear(fam["m0"], fam["m1"])))
    link = tmp_path / "looks-new"
    link.symlink_to(fam["m1"], target_is_directory=True)
    before = digest_tree(fam["m1"])
    assert main(["merge", str(cfg), str(link), "--overwrite", "-q"]) == 2
    assert "is the input model" in one_error_line(capsys.readouterr().err)
    assert digest_tree(fam["m1"]) == before


def test_sweep_refuses_a_candidate_directory_that_is_a_parent(fam, tmp_path, capsys):
    # the clinical parent lives where the sweep would write its candidate linear-0.5
    root = tmp_path / "sweeps"
    clinical = root / "linear-0.5"
    import shutil

    shutil.copytree(fam["m0"], clinical)
    spec = tmp_path / "sweep.yml"
    spec.write_text(yaml.safe_dump({"clinical": str(clinical), "instruct": str(fam["m1"]),
                                    "methods": ["linear"], "ratios": [0.5]}))
    before = digest_tree(clinical)
    assert main(["sweep", str(spec), str(root), "--overwrite", "-q"]) == 2
    assert "is the input model" in one_error_line(capsys.readouterr().err)
    assert digest_tree(clinical) == before
    # and a sweep directory inside a parent is refused before anything is read
    assert main(["sweep", str(spec), str(fam["m1"] / "sweeps"), "-q"]) == 2
    assert "lies inside the input model" in one_error_line(capsys.readouterr().err)
    assert not (fam["m1"] / "sweeps").exists()


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,                       # binary
    "merge_method: linear\n# caf\xe9\n".encode("latin-1"),   # text, but not UTF-8
])
@pytest.mark.parametrize("command", ["merge", "sweep", "evaluate-sweep"])
def test_config_that_is_not_text(tmp_path, capsys, content, command):
    cfg = tmp_path / "config.yml"
    cfg.write_bytes(content)
    args = [command, str(cfg), str(tmp_path / "out")] if command != "evaluate-sweep" else \
        [command, str(cfg), "--out", str(tmp_path / "out")]
    code = main(args)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "not UTF-8 text" in line and str(cfg) in line
    assert not (tmp_path / "out").exists()


def test_config_that_is_a_directory(tmp_path, capsys):
    from medmerge.errors import RecipeError
    from medmerge.merge.recipe import load_recipe

    assert main(["merge", str(tmp_path), str(tmp_path / "out")]) == 2   # click's usage error names it
    err = capsys.readouterr().err
    assert "is a directory" in err and str(tmp_path) in err and "Traceback" not in err
    with pytest.raises(RecipeError, match="is a directory, not a YAML file"):   # the pipelines' loader too
        load_recipe(tmp_path)


def test_run_config_that_is_not_text(tmp_path):
    from pipelines._launch import RunConfigError, read_run_config

    bad = tmp_path / "run.yaml"
    bad.write_bytes(b"\xff\xfe\x00parameters")
    with pytest.raises(RunConfigError, match="not UTF-8 text"):
        read_run_config(str(bad))
    with pytest.raises(RunConfigError, match="is a directory"):
        read_run_config(str(tmp_path))


def test_pipeline_configs_refuse_output_dirs_aliasing_inputs(fam, tmp_path):
    from medmerge.errors import OutputError
    from medmerge.finetune import FinetuneConfig
    from medmerge.selection.search import SearchConfig

    sweep = {"clinical": str(fam["m0"]), "instruct": str(fam["m1"]), "methods": ["linear"], "ratios": [0.5]}
    with pytest.raises(OutputError, match="is the parent model"):
        SearchConfig.model_validate({"sweep": sweep, "output_dir": str(fam["m0"])})
    with pytest.raises(OutputError, match="lies inside the parent model"):
        SearchConfig.model_validate({"sweep": sweep, "output_dir": str(fam["m1"] / "selected")})
    SearchConfig.model_validate({"sweep": sweep, "output_dir": str(tmp_path / "selected")})  # apart: fine
    with pytest.raises(OutputError, match="lies inside the initialisation"):
        FinetuneConfig.model_validate({"initialisations": [{"name": "c", "path": str(fam["m0"])}],
                                       "output_dir": str(fam["m0"] / "ft")})


def test_sft_refuses_to_write_over_the_model_it_trains(fam, tmp_path):
    from medmerge.errors import OutputError
    from medmerge.finetune.sft import SFTSettings, finetune
    from medmerge.generation.data import GenerationExample

    before = digest_tree(fam["m0"])
    ex = [GenerationExample(id="a", input="w1 w2", target="w3")]
    with pytest.raises(OutputError, match="is the model to fine-tune"):
        finetune(fam["m0"], ex, fam["m0"], SFTSettings(), overwrite=True)
    assert digest_tree(fam["m0"]) == before


_HOLDER = textwrap.dedent("""
    import sys, time
    from medmerge.io.atomic import exclusive_lock
    with exclusive_lock(sys.argv[1], wait=True):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def test_exclusive_lock_makes_the_second_run_wait(tmp_path):
    """Two processes on one lock: the second blocks until the first has finished, then proceeds; a lock whose
    holder was killed is free again at once (flock dies with its process)."""
    from medmerge.io.atomic import exclusive_lock

    lock = tmp_path / "run.lock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), "3"], stdout=subprocess.PIPE, text=True, env=env)
    assert first.stdout.readline().strip() == "held"
    with exclusive_lock(lock) as held:
        assert held is None  # taken: without wait, the caller is told so
    waited = []
    t0 = time.monotonic()
    with exclusive_lock(lock, wait=True, on_wait=waited.append) as held:
        elapsed = time.monotonic() - t0
        assert held is not None
    assert first.wait(timeout=30) == 0
    assert waited == [str(first.pid)] and elapsed > 1.5   # got it only once the first had slept its 3 s
    killed = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), "60"], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert killed.stdout.readline().strip() == "held"
    killed.kill()
    killed.wait()
    with exclusive_lock(lock) as held:
        assert held is not None


def test_same_run_config_and_server_share_one_lock(tmp_path):
    from pipelines._launch import run_lock_path

    cfg = {"sweep": "s.yml", "experiment": "e"}
    a = run_lock_path("merge_search", cfg, "http://127.0.0.1:5000")
    assert a == run_lock_path("merge_search", dict(reversed(list(cfg.items()))), "http://127.0.0.1:5000")
    assert a != run_lock_path("merge_search", cfg, "http://127.0.0.1:5001")
    assert a != run_lock_path("finetune", cfg, "http://127.0.0.1:5000")
    assert a != run_lock_path("merge_search", {**cfg, "experiment": "f"}, "http://127.0.0.1:5000")
