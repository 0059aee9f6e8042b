"""Every deterministic method against mergekit, bit for bit, in float32 and in bfloat16, through
`medmerge merge` and through `medmerge sweep` (whose linear candidates share one float32 upcast of
each parent tensor, and stream large tensors in row blocks)."""

from __future__ import annotations

import pytest
import torch
import yaml
from factory import make_family, read
from mk import mergekit_merge, ratio_recipe

from medmerge.cli import main
from medmerge.merge.methods import METHODS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Deterministic and computed by mergekit: the registry decides, so a method added there is tested here.
DETERMINISTIC = sorted(m.name for m in METHODS.values() if not m.stochastic and m.backend == "mergekit")


def test_the_deterministic_methods():
    # dare_*/della* draw random masks (seeded per tensor; mergekit seeds once, so their bits differ by
    # design: tests/test_engine.py); hierarchical_ot is medmerge's own (tests/test_hierarchical_ot.py).
    assert DETERMINISTIC == ["breadcrumbs", "breadcrumbs_ties", "linear", "slerp", "task_arithmetic", "ties"]


@pytest.fixture(scope="module", params=list(DTYPES))
def fam(request, tmp_path_factory):
    """base, m0, m1 stored in the dtype under test."""
    dtype = request.param
    return dtype, make_family(tmp_path_factory.mktemp(f"fam-{dtype}"), n_children=2, dtype=DTYPES[dtype])


def recipe(method: str, f: dict, dtype: str) -> dict:
    b, m0, m1 = str(f["base"]), str(f["m0"]), str(f["m1"])
    per_model = {"linear": {}, "task_arithmetic": {}, "ties": {"density": 0.5},
                 "breadcrumbs": {"density": 0.8, "gamma": 0.05}, "breadcrumbs_ties": {"density": 0.8, "gamma": 0.05}}
    if method == "slerp":
        return {"merge_method": "slerp", "base_model": m0, "models": [{"model": m0}, {"model": m1}],
                "parameters": {"t": 0.3}, "dtype": dtype}
    data = {"merge_method": method, "dtype": dtype,
            "models": [{"model": m0, "parameters": {"weight": 0.6, **per_model[method]}},
                       {"model": m1, "parameters": {"weight": 0.3, **per_model[method]}}]}
    if METHODS[method].needs_base:
        data["base_model"] = b
    if method == "task_arithmetic":
        data["parameters"] = {"lambda": 0.7}
    return data


def assert_bit_identical(mine: dict, theirs: dict, dtype: torch.dtype, what: str) -> None:
    assert sorted(mine) == sorted(theirs), what
    for k in mine:
        assert mine[k].dtype == theirs[k].dtype == dtype, (what, k, mine[k].dtype, theirs[k].dtype)
        assert torch.equal(mine[k], theirs[k]), f"{what}: {k} differs from mergekit"


@pytest.mark.parametrize("method", DETERMINISTIC)
def test_merge_is_bit_identical_to_mergekit(fam, method, tmp_path):
    dtype, f = fam
    data = recipe(method, f, dtype)
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["merge", str(cfg), str(tmp_path / "mine"), "-q"]) == 0
    theirs = read(mergekit_merge(data, tmp_path / "theirs"))
    assert_bit_identical(read(tmp_path / "mine"), theirs, DTYPES[dtype], f"{method} {dtype}")
    if METHODS[method].row_separable:  # the same bits when every tensor is streamed in row blocks
        assert main(["merge", str(cfg), str(tmp_path / "chunked"), "-q", "--chunk-size", "500B"]) == 0
        assert_bit_identical(read(tmp_path / "chunked"), theirs, DTYPES[dtype], f"{method} {dtype} chunked")


@pytest.mark.parametrize("methods,chunk", [(["linear", "slerp"], "8MiB"), (["linear"], "500B")],
                         ids=["linear+slerp", "linear-row-chunked"])
def test_sweep_candidates_are_bit_identical_to_mergekit(fam, methods, chunk, tmp_path):
    """The sweep computes the linear candidates from one shared float32 upcast of each parent tensor;
    each candidate must still be exactly what mergekit writes for its own mergekit_config.yml."""
    dtype, f = fam
    spec = tmp_path / "sweep.yml"
    spec.write_text(yaml.safe_dump({"clinical": str(f["m0"]), "instruct": str(f["m1"]), "base": str(f["base"]),
                                    "methods": methods, "ratios": [0.0, 0.3, 0.7, 1.0], "dtype": dtype}))
    assert main(["sweep", str(spec), str(tmp_path / "out"), "-q", "--chunk-size", chunk]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{m}-{r}" for m in methods for r in ("0.0", "0.3", "0.7", "1.0"))
    for name in names:   # against recipes written apart from the candidates' own mergekit_config.yml
        cand = tmp_path / "out" / name
        theirs = read(mergekit_merge(ratio_recipe(name, str(f["m0"]), str(f["m1"]), dtype=dtype), tmp_path / "mk" / name))
        assert_bit_identical(read(cand), theirs, DTYPES[dtype], f"sweep {name} {dtype}")
