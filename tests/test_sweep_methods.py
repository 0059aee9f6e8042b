"""Sweeps over methods and their parameters: the methods mapping, presets as data, bad grids refused early."""

from __future__ import annotations

import pytest
import yaml

from medmerge.cli import main
from medmerge.merge.recipe import Range, SweepSpec, load_preset

NOWHERE = {"clinical": "/nonexistent/clinical", "instruct": "/nonexistent/instruct", "base": "/nonexistent/base"}


def test_hierarchical_study_preset_is_its_six_methods():
    spec = SweepSpec(**NOWHERE, preset="hierarchical-study-methods")
    cands = {c.name: c for c in spec.evaluated_candidates()}
    assert list(cands) == ["clinical", "instruct", "linear", "task_arithmetic", "dare_ties", "della", "breadcrumbs",
                           "hierarchical_ot"]
    assert cands["clinical"].role == "clinical" and cands["instruct"].role == "instruct"
    mk = {n: yaml.safe_load(c.recipe.to_yaml()) for n, c in cands.items()}
    assert [m["parameters"] for m in mk["linear"]["models"]] == [{"weight": 0.5}, {"weight": 0.5}]
    assert "base_model" not in mk["linear"]
    assert mk["dare_ties"]["base_model"] == NOWHERE["base"]
    assert mk["dare_ties"]["models"][0]["parameters"] == {"weight": 0.5, "density": 0.6}
    assert mk["della"]["models"][1]["parameters"] == {"weight": 0.5, "density": 0.6, "epsilon": 0.05}
    assert mk["breadcrumbs"]["models"][0]["parameters"] == {"weight": 0.5, "density": 0.9, "gamma": 0.01}
    assert mk["hierarchical_ot"]["base_model"] == NOWHERE["base"]
    # the clinical parent as a candidate: weights (1, 0), exactly the clinical model
    assert [m["parameters"]["weight"] for m in mk["clinical"]["models"]] == [1.0, 0.0]
    assert load_preset("hierarchical-study-methods")["methods"]["hierarchical_ot"] == {}


def test_grid_expands_and_names_by_what_varies():
    spec = SweepSpec(**NOWHERE, methods={"dare_ties": {"density": [0.6, 0.8], "ratio": 0.3},
                                         "slerp": {"t": [[0.0, 0.5, 1.0], 0.25]}})
    names = [c.name for c in spec.candidates()]
    assert names == ["dare_ties-density=0.6", "dare_ties-density=0.8", "slerp-t=0-0.5-1", "slerp-t=0.25"]
    c = spec.candidates()[0]
    assert [m.parameters["weight"] for m in c.recipe.models] == pytest.approx([0.7, 0.3])
    slerp = spec.candidates()[2].recipe
    assert slerp.base_model == NOWHERE["clinical"] and slerp.parameters == {"t": [0.0, 0.5, 1.0]}


def test_ratio_form_is_unchanged():
    spec = SweepSpec(clinical="c", instruct="i", methods=["linear", "slerp"], ratios=[0.0, 0.5, 1.0])
    assert [c.name for c in spec.evaluated_candidates()] == [
        "linear-0.0", "linear-0.5", "linear-1.0", "slerp-0.0", "slerp-0.5", "slerp-1.0"]
    assert [c.role for c in spec.candidates()][:3] == ["clinical", None, "instruct"]
    assert len(SweepSpec(clinical="c", instruct="i").candidates()) == 22


def test_ratio_form_is_the_methods_mapping_once_parsed():
    """The list form is input sugar: parsed, it is the mapping (marked ratio_sweep), and its dump reads back
    to the same spec and the same candidates."""
    spec = SweepSpec(clinical="c", instruct="i", methods=["linear", "slerp"], ratios=[0.3, 0.7])
    assert spec.methods == {"linear": {"ratio": [0.3, 0.7]}, "slerp": {"ratio": [0.3, 0.7]}} and spec.ratio_sweep
    again = SweepSpec.model_validate(spec.model_dump(mode="json"))
    assert again == spec and [c.name for c in again.evaluated_candidates()] == [
        "linear-0.3", "linear-0.7", "slerp-0.3", "slerp-0.7"]   # no parents added: the ratio form lists its own
    one = SweepSpec(clinical="c", instruct="i", methods=["linear"], ratios=[0.5])
    assert [c.name for c in one.candidates()] == ["linear-0.5"]   # named by its ratio, as the ratio grid names it
    mapped = SweepSpec(clinical="c", instruct="i", methods={"linear": {"ratio": [0.5]}})
    assert not mapped.ratio_sweep and [c.name for c in mapped.evaluated_candidates()] == [
        "clinical", "instruct", "linear"]
    assert mapped.candidates()[0].recipe == one.candidates()[0].recipe
    with pytest.raises(ValueError, match="ratio_sweep: every method's grid must be its ratios alone"):
        SweepSpec(clinical="c", instruct="i", methods={"linear": {"weight": [0.5]}}, ratio_sweep=True)


def test_optuna_space_parses_ranges():
    spec = SweepSpec(**NOWHERE, search="optuna", budget=8,
                     methods={"della": {"density": {"low": 0.5, "high": 0.9}, "epsilon": {"low": 0.0, "high": 0.09}},
                              "slerp": {"t": {"low": 0.0, "high": 1.0, "gradient": 3}}})
    assert spec.grids()["slerp"]["t"] == Range(low=0.0, high=1.0, gradient=3)
    assert spec.first_params("slerp") == {"t": [0.0, 0.0, 0.0]}


def _write(tmp_path, data) -> str:
    p = tmp_path / "sweep.yml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


BAD = [
    ({"methods": {"frankenmerge": {}}}, "unknown merge method 'frankenmerge'"),
    ({"methods": {"dare_ties": {"densty": [0.6]}}}, "parameter 'densty' is not declared by dare_ties"),
    ({"methods": {"dare_ties": {"density": []}}}, "methods.dare_ties.density: empty grid"),
    ({"methods": {"della": {"density": {"low": 0.9, "high": 0.6}}}, "search": "optuna", "budget": 4},
     "range low 0.9 > high 0.6"),
    ({"methods": {"della": {"density": {"low": 0.6, "high": 0.9}}}, "search": "optuna", "budget": 0},
     "budget 0: it must be at least 1"),
    ({"methods": {"dare_ties": {"density": [0.6]}}, "base": None}, "dare_ties needs a base model"),
    ({"methods": {"della": {"density": {"low": 0.6, "high": 0.9}}}}, "a range needs search: optuna"),
    ({"preset": "third-study"}, "unknown preset 'third-study'"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[m for _, m in BAD])
@pytest.mark.parametrize("command", ["sweep", "evaluate-sweep"])
def test_bad_grid_exits_2_before_any_model_is_read(tmp_path, capsys, bad, message, command):
    """The parents do not exist: a message about them would mean a model was about to be read."""
    cfg = _write(tmp_path, {**NOWHERE, **bad})
    args = [command, cfg, str(tmp_path / "out")] if command == "sweep" else \
        [command, cfg, "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("medmerge: error:") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad, message", BAD, ids=[m for _, m in BAD])
def test_merge_search_config_refuses_bad_grid(tmp_path, capsys, bad, message):
    from pipelines.merge_search import main as ms

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {"sweep": {**NOWHERE, **bad},
                                                             "output_dir": str(tmp_path / "out")}}}))
    assert ms(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("merge_search: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("objectives, message", [
    (["if_score", "hellaswag_avg"], "unknown objective 'hellaswag_avg'"),
    (["if_score", "if_score"], "'if_score' twice"),
    (["if_score", "mm_hellaswag"], "objective 'mm_hellaswag' needs task mm_hellaswag, which the suites"),
])
def test_merge_search_config_refuses_bad_objectives(tmp_path, capsys, objectives, message):
    from factory import make_family

    from pipelines.merge_search import main as ms

    fam = make_family(tmp_path / "fam")   # real parents: the preflight names missing ones too
    parents = {"clinical": str(fam["m0"]), "instruct": str(fam["m1"]), "base": str(fam["base"])}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {
        "sweep": {**parents, "methods": ["linear"]}, "objectives": objectives, "suites": ["clinical", "ifeval"],
        "output_dir": str(tmp_path / "out")}}}))
    assert ms(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("merge_search: error:") and message in err and err.count("\n") == 1, err


def test_hierarchical_study_preset_sweep_reads_each_parent_once(tmp_path, parent_reads):
    """Six methods, mergekit's and the native one (which plans in another tensor order), one pass."""
    from factory import assert_read_once, make_family

    from medmerge.merge.engine import sweep

    fam = make_family(tmp_path / "fam", n_children=2)
    spec = SweepSpec(clinical=str(fam["m0"]), instruct=str(fam["m1"]), base=str(fam["base"]), preset="hierarchical-study-methods")
    outs = sweep(spec, tmp_path / "out", quiet=True)
    assert sorted(outs) == sorted(["linear", "task_arithmetic", "dare_ties", "della", "breadcrumbs",
                                   "hierarchical_ot"])
    for ref in ("m0", "m1", "base"):
        assert_read_once(parent_reads, fam[ref])


def test_a_dumped_spec_parses_back_to_itself():
    """ZenML hands a step the config as JSON and validates it again: presets and ranges survive that."""
    for spec in (SweepSpec(**NOWHERE, preset="hierarchical-study-methods"),
                 SweepSpec(**NOWHERE, search="optuna", budget=3, methods={"slerp": {"t": {"low": 0, "high": 1,
                                                                                         "gradient": 3}}})):
        assert SweepSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_a_methods_mapping_sweep_is_what_mergekit_makes_of_recipes_written_apart(tmp_path):
    """``medmerge sweep`` over a ``methods:`` mapping, each candidate against mergekit on a recipe written here
    from the sweep's documented meaning (``ratio`` r weights clinical and instruct by (1 - r, r); a scalar
    per-model parameter goes to both models; ``t`` and ``lambda`` are the method's own; slerp's base is the
    clinical model; the base-model methods take ``base``), never from what medmerge emitted: tensor for tensor."""
    import torch
    from factory import make_family, read
    from mk import mergekit_merge

    fam = make_family(tmp_path / "fam", n_children=2)
    c, i, b = str(fam["m0"]), str(fam["m1"]), str(fam["base"])
    spec = _write(tmp_path, {"clinical": c, "instruct": i, "base": b, "methods": {
        "linear": {"ratio": [0.25, 0.6]},
        "slerp": {"t": [[0.0, 0.5, 1.0], 0.4]},
        "task_arithmetic": {"weight": 0.5, "lambda": [0.7, 1.2]},
        "ties": {"ratio": 0.3, "density": [0.5, 0.8]}}})

    def pair(w_c, w_i, **per_model):
        return [{"model": c, "parameters": {"weight": w_c, **per_model}},
                {"model": i, "parameters": {"weight": w_i, **per_model}}]

    expected = {
        "linear-0.25": {"merge_method": "linear", "models": pair(0.75, 0.25)},
        "linear-0.6": {"merge_method": "linear", "models": pair(0.4, 0.6)},
        "slerp-t=0-0.5-1": {"merge_method": "slerp", "base_model": c, "models": [{"model": c}, {"model": i}],
                            "parameters": {"t": [0.0, 0.5, 1.0]}},
        "slerp-t=0.4": {"merge_method": "slerp", "base_model": c, "models": [{"model": c}, {"model": i}],
                        "parameters": {"t": 0.4}},
        "task_arithmetic-lambda=0.7": {"merge_method": "task_arithmetic", "base_model": b,
                                       "models": pair(0.5, 0.5), "parameters": {"lambda": 0.7}},
        "task_arithmetic-lambda=1.2": {"merge_method": "task_arithmetic", "base_model": b,
                                       "models": pair(0.5, 0.5), "parameters": {"lambda": 1.2}},
        "ties-density=0.5": {"merge_method": "ties", "base_model": b, "models": pair(0.7, 0.3, density=0.5)},
        "ties-density=0.8": {"merge_method": "ties", "base_model": b, "models": pair(0.7, 0.3, density=0.8)},
    }
    assert main(["sweep", spec, str(tmp_path / "out"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)
    for name, recipe in expected.items():
        mine, theirs = read(tmp_path / "out" / name), read(mergekit_merge(recipe, tmp_path / "mk" / name))
        assert sorted(mine) == sorted(theirs), name
        for k in theirs:
            assert mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]), (name, k)
