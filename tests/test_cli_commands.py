"""Commands and options the README lists, each through the `medmerge` command line with its output
asserted: `methods`, `evaluate-sweep`, the `medical5` suite, `--random-seed`,
`--max-shard-size`, and sharded parent checkpoints as input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from factory import assert_read_once, binomial_stderr, make_family, read
from mk import mergekit_merge
from safetensors.torch import save_file

from medmerge.cli import main
from medmerge.merge.methods import METHODS


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    """Tiny checkpoints (milliseconds to build); a context long enough for 5-shot prompts."""
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2, max_position_embeddings=2048)


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


# --- medmerge methods ----------------------------------------------------------------------------

def test_methods_lists_every_method_with_its_declared_parameters(capsys):
    code, out, _ = cli(capsys, "methods")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert list(lines) == list(METHODS) and len(lines) == 11
    assert "no base" in lines["linear"] and "weight[per model]" in lines["linear"]
    assert "normalize=True" in lines["linear"]
    assert "base required" in lines["task_arithmetic"] and "lambda=1.0" in lines["task_arithmetic"]
    assert "density[per model]" in lines["ties"] and "density[per model]" in lines["dare_ties"]
    assert "parameters: t" in lines["slerp"]                             # required: no default shown
    assert lines["hierarchical_ot"].split(None, 1)[1] == \
        "Hierarchical Cosine-OT-LERP (base required); parameters: align='per_projection'"


# --- medmerge evaluate-sweep -----------------------------------------------------------------------

def test_evaluate_sweep_prints_a_row_per_candidate_and_writes_reports(fam, tmp_path, capsys, monkeypatch,
                                                                       parent_reads):
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(tmp_path / "cache"))
    spec = write_yaml(tmp_path / "sweep.yml", {"clinical": str(fam["m0"]), "instruct": str(fam["m1"]),
                                               "methods": ["linear", "slerp"], "ratios": [0.0, 1.0]})
    args = ["evaluate-sweep", spec, "--suite", "clinical", "--data-dir", "sample", "--limit", "2",
            "--out", tmp_path / "reports"]
    code, out, _ = cli(capsys, *args)
    assert code == 0
    # the in-memory preload read every byte of both parents once, for all four candidates
    assert_read_once(parent_reads, fam["m0"]) and assert_read_once(parent_reads, fam["m1"])
    names = ["linear-0.0", "linear-1.0", "slerp-0.0", "slerp-1.0"]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [f"{n}.json" for n in names]
    lines = out.splitlines()
    assert lines[0].split() == ["candidate", "Medical", "Avg", "IF", "score", "cached", "tasks"]
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert list(rows) == names
    for name in names:
        report = json.loads((tmp_path / "reports" / f"{name}.json").read_text())
        assert len(report["tasks"]) == 10 and list(report["scores"]) == ["medical_avg"]   # no IF score: clinical only
        assert "if_score" not in report and "medical_avg" not in report                # each score stored once
        assert rows[name] == [name, f"{report['scores']['medical_avg']['value']:.4f}", "0"]
        assert all(t["n_samples"] == 2 for t in report["tasks"].values())
    # ratio 0 is the clinical model and ratio 1 the instruct model, whichever method
    assert rows["linear-0.0"][1] == rows["slerp-0.0"][1] and rows["linear-1.0"][1] == rows["slerp-1.0"][1]
    assert lines[5] == "cache: 0 hits, 40 misses"
    # the second run is served from the cache: every task of every candidate
    code, out, _ = cli(capsys, *args)
    assert code == 0 and out.splitlines()[5] == "cache: 40 hits, 0 misses"
    assert all(line.split()[-1] == "10" for line in out.splitlines()[1:5])


# --- the medical5 suite ---------------------------------------------------------------------------

def test_medical5_is_five_shot_with_hellaswag_acc_norm(fam, tmp_path, capsys, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    contexts: list[tuple[str, str]] = []
    real = HFLM.loglikelihood

    def recording(self, requests, *a, **k):
        contexts.extend((r.task_name, r.args[0]) for r in requests)
        return real(self, requests, *a, **k)

    monkeypatch.setattr(HFLM, "loglikelihood", recording)
    out = tmp_path / "r.json"
    code, printed, _ = cli(capsys, "evaluate", fam["m0"], "--suite", "medical5", "--data-dir", "sample",
                           "--limit", "3", "--out", out, "--no-cache")
    assert code == 0
    r = json.loads(out.read_text())
    assert r["suites"] == ["medical5"]
    assert set(r["tasks"]) == {"mm_medqa_4options", "mm_pubmedqa", "mm_mmlu_professional_medicine", "mm_medmcqa",
                               "mm_hellaswag"}
    for name, t in r["tasks"].items():
        assert t["num_fewshot"] == 5 and t["n_samples"] == 3, name
        acc = t["metrics"]["acc"]
        assert acc["value"] * 3 == pytest.approx(round(acc["value"] * 3))    # a share of 3 documents
        assert acc["stderr"] == pytest.approx(binomial_stderr(acc["value"], 3)), name   # each with its stderr
    norm = r["tasks"]["mm_hellaswag"]["metrics"]["acc_norm"]
    assert norm["value"] * 3 == pytest.approx(round(norm["value"] * 3))
    assert norm["stderr"] == pytest.approx(binomial_stderr(norm["value"], 3))
    assert "medical_avg" not in r["scores"] and "if_score" not in r["scores"]   # medical5 feeds neither score
    table = {tuple(line.split()[:2]) for line in printed.splitlines()}
    assert ("HellaSwag", "acc_norm") in table                                # the alias, as printed
    # the shots are real: every MedQA prompt holds five solved questions before its own (4 options each)
    medqa = [c for task, c in contexts if task == "mm_medqa_4options"]
    assert len(medqa) == 3 * 4 and all(c.count("Question: ") == 6 and c.count("Answer:") == 6 for c in medqa)
    assert len([c for task, c in contexts if task == "mm_hellaswag"]) == 3 * 4


# --- merge options: --random-seed, --max-shard-size -------------------------------------------------

def test_random_seed_option_seeds_the_stochastic_methods(fam, tmp_path, capsys):
    recipe = {"merge_method": "dare_ties", "base_model": str(fam["base"]),
              "models": [{"model": str(fam["m0"]), "parameters": {"weight": 0.5, "density": 0.5}},
                         {"model": str(fam["m1"]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    cfg = write_yaml(tmp_path / "dare.yml", recipe)
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        code, out, _ = cli(capsys, "merge", cfg, tmp_path / name, "-q", "--random-seed", seed)
        assert code == 0 and out.strip() == f"wrote {tmp_path / name}"
        outs[name] = read(tmp_path / name)
    assert all(torch.equal(outs["a"][k], outs["b"][k]) for k in outs["a"])            # same seed, same bits
    assert any(not torch.equal(outs["a"][k], outs["c"][k]) for k in outs["a"])        # another seed differs
    # the option is the recipe's random_seed: same bits, recorded in the written recipe
    seeded = write_yaml(tmp_path / "seeded.yml", {**recipe, "random_seed": 7})
    assert cli(capsys, "merge", seeded, tmp_path / "d", "-q")[0] == 0
    assert all(torch.equal(outs["a"][k], v) for k, v in read(tmp_path / "d").items())
    assert json.loads((tmp_path / "a" / "medmerge.json").read_text())["recipe"]["random_seed"] == 7
    # about 1 - density of each task vector's entries is dropped: the merge is not the plain average
    base, m0, m1 = read(fam["base"]), read(fam["m0"]), read(fam["m1"])
    k = "model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(outs["a"][k], base[k] + 0.5 * ((m0[k] - base[k]) + (m1[k] - base[k])))


def test_max_shard_size_option_shards_the_output(fam, tmp_path, capsys):
    cfg = write_yaml(tmp_path / "lin.yml", {"merge_method": "linear", "models": [
        {"model": str(fam["m0"]), "parameters": {"weight": 0.5}}, {"model": str(fam["m1"]), "parameters": {"weight": 0.5}}]})
    assert cli(capsys, "merge", cfg, tmp_path / "single", "-q")[0] == 0
    assert cli(capsys, "merge", cfg, tmp_path / "sharded", "-q", "--max-shard-size", "20KB")[0] == 0
    assert sorted(p.name for p in (tmp_path / "single").glob("*.safetensors")) == ["model.safetensors"]
    shards = sorted((tmp_path / "sharded").glob("model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == [p.name for p in shards]
    largest_tensor = max(v.numel() * v.element_size() for v in read(tmp_path / "single").values())
    for shard in shards:  # each shard's tensors fit 20 kB, unless one tensor alone is larger
        data = sum(v.numel() * v.element_size() for v in read_file_tensors(shard).values())
        assert data <= max(20_000, largest_tensor), shard.name
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size()
                                                  for v in read(tmp_path / "single").values())
    single, sharded = read(tmp_path / "single"), read(tmp_path / "sharded")
    assert sorted(single) == sorted(sharded) and all(torch.equal(single[k], sharded[k]) for k in single)
    assert not (tmp_path / "sharded" / "model.safetensors").exists()


def read_file_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# --- sharded parents as input -----------------------------------------------------------------------

def shard(src, dst, n_shards: int = 3):
    """A copy of checkpoint ``src`` with its weights split over ``n_shards`` files and an index."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    sd = read(src)
    names = sorted(sd)
    weight_map = {}
    for i in range(n_shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: sd[k] for k in names[i::n_shards]}
        save_file(part, str(dst / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return dst


def test_sharded_parents_merge_and_sweep_like_single_files(fam, tmp_path, capsys):
    sharded = {k: shard(v, tmp_path / f"sharded-{k}") for k, v in fam.items()}
    assert not (sharded["m0"] / "model.safetensors").exists()
    # check, merge (base-model method) and sweep each read the sharded parents
    code, out, _ = cli(capsys, "check", sharded["base"], sharded["m0"], sharded["m1"])
    assert code == 0 and out.startswith("compatible:")
    ties = lambda f: {"merge_method": "ties", "base_model": str(f["base"]), "models": [  # noqa: E731
        {"model": str(f["m0"]), "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": str(f["m1"]), "parameters": {"weight": 0.4, "density": 0.5}}]}
    assert cli(capsys, "merge", write_yaml(tmp_path / "a.yml", ties(sharded)), tmp_path / "from-shards", "-q")[0] == 0
    assert cli(capsys, "merge", write_yaml(tmp_path / "b.yml", ties(fam)), tmp_path / "from-single", "-q")[0] == 0
    a, b = read(tmp_path / "from-shards"), read(tmp_path / "from-single")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    theirs = read(mergekit_merge(ties(sharded), tmp_path / "mk"))                   # and mergekit agrees
    assert all(torch.equal(a[k], theirs[k]) for k in a)
    # the recorded provenance hashes every shard
    parents = json.loads((tmp_path / "from-shards" / "medmerge.json").read_text())["parents"]
    assert sorted(parents[str(sharded["m0"])]["weights"]) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    spec = {"methods": ["linear", "slerp"], "ratios": [0.4]}
    assert cli(capsys, "sweep", write_yaml(tmp_path / "s1.yml", {"clinical": str(sharded["m0"]),
               "instruct": str(sharded["m1"]), **spec}), tmp_path / "sweep-shards", "-q")[0] == 0
    assert cli(capsys, "sweep", write_yaml(tmp_path / "s2.yml", {"clinical": str(fam["m0"]),
               "instruct": str(fam["m1"]), **spec}), tmp_path / "sweep-single", "-q")[0] == 0
    for name in ("linear-0.4", "slerp-0.4"):
        x, y = read(tmp_path / "sweep-shards" / name), read(tmp_path / "sweep-single" / name)
        assert sorted(x) == sorted(y) and all(torch.equal(x[k], y[k]) for k in x), name


def test_demo_models_writes_the_three_checkpoints_and_a_sweep_that_uses_them(demo_models, tmp_path, capsys):
    """``medmerge demo-models OUT`` prints where each checkpoint is and writes a sweep.yml the sweep reads. It
    copies the build cached for this code and seed (the one the ``demo_models`` fixture reads: built once per
    machine; that a fresh build with seed 0 gives these very bytes is tests/test_demo_models.py's)."""
    import hashlib

    from medmerge.demo.cache import build_key, cache_root
    from medmerge.merge.recipe import SweepSpec

    out = tmp_path / "demo"
    code, stdout, _ = cli(capsys, "demo-models", str(out), "-q")
    assert code == 0
    printed = dict(line.split(None, 1) for line in stdout.strip().splitlines())
    assert set(printed) == {"base", "clinical", "instruct", "sweep"}
    for name in ("base", "clinical", "instruct"):
        ck = out / name
        assert printed[name] == str(ck)
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in ck.iterdir()}
        assert not list(out.glob(".medmerge-tmp-*"))
        for f in ("model.safetensors", "config.json", "tokenizer.json"):
            assert (ck / f).read_bytes() == (demo_models[name] / f).read_bytes(), (name, f)
    spec = SweepSpec.model_validate(yaml.safe_load((out / "sweep.yml").read_text()))
    assert (spec.clinical, spec.instruct, spec.base) == tuple(str((out / n).resolve())
                                                               for n in ("clinical", "instruct", "base"))
    assert spec.ratio_sweep and list(spec.methods) == ["linear", "slerp"] and len(spec.methods["linear"]["ratio"]) == 11
    # the three are different models: the clinical and instruct children moved away from the base
    assert len({hashlib.sha256((out / n / "model.safetensors").read_bytes()).hexdigest()
                for n in ("base", "clinical", "instruct")}) == 3
    # the cache entry is keyed by the seed (and the code): another seed is another entry
    assert build_key(0) != build_key(1) and len(build_key(0)) == 24
    assert cache_root() == Path(os.environ.get("MEDMERGE_DEMO_MODELS_CACHE")
                                or Path.home() / ".cache" / "medmerge" / "demo-models")


def test_a_demo_model_cache_entry_edited_in_place_is_not_used(demo_models, tmp_path):
    """A cached build is checked against its manifest before use: one changed byte and it no longer counts
    (and would be built again)."""
    import shutil

    from medmerge.demo import cache

    entry = tmp_path / "cache" / cache.build_key(0)
    shutil.copytree(cache.cached_demo_models(0)["base"].parent, entry)   # a copy of this machine's entry
    assert cache._intact(entry)
    weights = entry / "clinical" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert not cache._intact(entry)
    (entry / "manifest.json").unlink()
    assert not cache._intact(entry)
