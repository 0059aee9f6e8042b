"""Single-pass sweeps: K candidates from one read of the parents, each reproducible by mergekit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from factory import assert_read_once, make_family, read
from mk import mergekit_merge, ratio_recipe

from medmerge.cli import main
from medmerge.io.checkpoint import Checkpoint
from medmerge.merge.engine import iter_sweep, sweep
from medmerge.merge.recipe import SweepSpec


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


@pytest.fixture(scope="module")
def spec(fam):
    return SweepSpec(clinical=str(fam["m0"]), instruct=str(fam["m1"]), base=str(fam["base"]))


@pytest.fixture(scope="module")
def swept(spec, tmp_path_factory):
    return sweep(spec, tmp_path_factory.mktemp("sweep") / "out", quiet=True)


def test_default_grid_names(swept):
    assert list(swept) == [f"{m}-{r / 10:.1f}" for m in ("linear", "slerp") for r in range(11)]
    for path in swept.values():
        assert (path / "model.safetensors").exists() and (path / "mergekit_config.yml").exists()


def test_every_candidate_is_reproduced_by_mergekit(swept, spec, tmp_path):
    for name, path in swept.items():
        theirs = read(mergekit_merge(ratio_recipe(name, spec.clinical, spec.instruct), tmp_path / name))
        mine = read(path)
        assert sorted(mine) == sorted(theirs)
        for k in mine:
            assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), (name, k)


def test_ratio_semantics(swept, fam):
    clinical, instruct = read(fam["m0"]), read(fam["m1"])
    assert all(torch.equal(v, clinical[k]) for k, v in read(swept["linear-0.0"]).items())
    assert all(torch.equal(v, instruct[k]) for k, v in read(swept["linear-1.0"]).items())
    mid = read(swept["linear-0.3"])
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(mid[k], 0.7 * clinical[k] + 0.3 * instruct[k])
    cfg = yaml.safe_load((swept["slerp-0.3"] / "mergekit_config.yml").read_text())
    assert cfg["base_model"] == str(fam["m0"]) and cfg["parameters"] == {"t": 0.3}


def test_each_parent_tensor_is_read_once(spec, tmp_path, parent_reads):
    sweep(spec, tmp_path / "out", quiet=True)
    assert assert_read_once(parent_reads, spec.clinical) == assert_read_once(parent_reads, spec.instruct) == \
        len(Checkpoint(spec.clinical).keys())                           # whole tensors: one read each
    assert Path(spec.base).resolve() / "model.safetensors" not in parent_reads  # opened, not needed


def test_row_chunked_sweep_still_reads_each_byte_once(spec, tmp_path, parent_reads):
    linear = spec.model_copy(update={"methods": {"linear": spec.methods["linear"]}})
    sweep(linear, tmp_path / "out", quiet=True, chunk_bytes=1000)
    n_tensors = len(Checkpoint(spec.clinical).keys())
    # chunking happened (the 64 x 32 float32 embedding alone is 8 blocks of 1000 bytes or less) ...
    assert assert_read_once(parent_reads, spec.clinical) > n_tensors + 8
    # ... and each row block was read once for all 11 candidates
    assert assert_read_once(parent_reads, spec.instruct) > n_tensors + 8


def test_in_memory_sweep_reads_each_parent_byte_once(spec, parent_reads):
    names = [cand.name for cand, _ in iter_sweep(spec)]                  # preloaded parents
    assert len(names) == 22
    assert_read_once(parent_reads, spec.clinical)
    assert_read_once(parent_reads, spec.instruct)


def test_in_memory_sweep_writes_nothing_and_matches_disk(spec, swept, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    for cand, sd in iter_sweep(spec):
        disk = read(swept[cand.name])
        assert sorted(sd) == sorted(disk)
        assert all(torch.equal(sd[k], disk[k]) for k in sd), cand.name
        seen.append(cand.name)
    assert seen == list(swept)
    assert list(tmp_path.iterdir()) == []


def test_cli_sweep_and_bad_specs(fam, tmp_path, capsys):
    good = {"clinical": str(fam["m0"]), "instruct": str(fam["m1"]), "methods": ["linear"], "ratios": [0.0, 0.5]}
    cfg = tmp_path / "s.yml"
    cfg.write_text(yaml.safe_dump(good))
    assert main(["sweep", str(cfg), str(tmp_path / "out"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["linear-0.0", "linear-0.5"]
    for bad, message in [
        ({**good, "methods": ["ties"]}, "cannot be swept"),
        ({**good, "ratios": [0.5, 1.5]}, "ratio 1.5 is outside [0, 1]"),
        ({**good, "ratios": [0.5, 0.5]}, "duplicates"),
        ({**good, "ratio": [0.5]}, "unknown key 'ratio'"),
        ({"instruct": str(fam["m1"])}, "clinical"),
    ]:
        cfg.write_text(yaml.safe_dump(bad))
        assert main(["sweep", str(cfg), str(tmp_path / "bad"), "-q"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
