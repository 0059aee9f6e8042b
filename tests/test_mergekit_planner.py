"""mergekit's planner through medmerge/merge/mergekit_planner.py: the pinned range is the tested one and holds the
installed mergekit, the private parts it uses are there, and a mergekit without them fails loudly, naming them."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement

from medmerge.io.checkpoint import Checkpoint
from medmerge.merge import mergekit_planner

ROOT = Path(__file__).resolve().parents[1]


def test_the_pinned_mergekit_range_is_the_tested_one_and_holds_the_installed_mergekit():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in deps if Requirement(d).name == "mergekit"]
    assert str(pin.specifier) == str(Requirement(f"mergekit{mergekit_planner.TESTED_RANGE}").specifier)
    assert pin.specifier.contains(version("mergekit"))


def test_the_private_parts_it_uses_are_there():
    mergekit_planner.check_private_api()   # raises MergekitAPIError naming what is missing


@pytest.mark.parametrize("owner, attr, named", [
    ("mergekit.plan.MergePlanner", "_plan", "MergePlanner._plan()"),
    ("mergekit.plan.MergePlanner", "__annotations__", "MergePlanner._tensors"),
    ("mergekit.io.tasks.LoaderCache", "loaders", "LoaderCache.loaders"),
])
def test_a_mergekit_that_changed_them_fails_loudly_before_planning(monkeypatch, tmp_path, owner, attr, named):
    """As an upgrade that renamed a private part would: the planner refuses, naming the part and the range."""
    from factory import make_family

    module, cls = owner.rsplit(".", 1)
    target = getattr(__import__(module, fromlist=[cls]), cls)
    monkeypatch.setattr(target, attr, {} if attr == "__annotations__" else None)
    fam = make_family(tmp_path)
    config = {"merge_method": "linear", "models": [{"model": str(fam["m0"]), "parameters": {"weight": 0.5}},
                                                   {"model": str(fam["m1"]), "parameters": {"weight": 0.5}}]}
    with pytest.raises(mergekit_planner.MergekitAPIError,
                       match=f"has no .*{re.escape(named)}.*tested with mergekit>=0\\.1\\.5"):
        mergekit_planner.plan(config)


def test_plan_gives_one_task_per_tensor_with_its_inputs(tmp_path):
    from factory import make_family

    fam = make_family(tmp_path)
    config = {"merge_method": "linear", "dtype": "float32",
              "models": [{"model": str(fam["m0"]), "parameters": {"weight": 0.25}},
                         {"model": str(fam["m1"]), "parameters": {"weight": 0.75}}]}
    tasks = mergekit_planner.plan(config)
    ckpts = {str(fam[k]): Checkpoint(fam[k]) for k in ("m0", "m1")}
    assert sorted(t.name for t in tasks) == sorted(ckpts[str(fam["m0"])].keys())
    task = tasks[0]
    assert sorted(i.path for i in task.inputs) == sorted(ckpts) and all(i.cast == torch.float32 for i in task.inputs)
    tensors = {i.model: ckpts[i.path].get(i.names[0]) for i in task.inputs}
    want = 0.25 * ckpts[str(fam["m0"])].get(task.name) + 0.75 * ckpts[str(fam["m1"])].get(task.name)
    assert torch.allclose(task.execute(tensors), want, atol=1e-6)
