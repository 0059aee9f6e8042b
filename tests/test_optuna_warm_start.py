"""A search's warm start (optuna_search.coarse_grid, enqueued) and its samplers (optuna_search.make_sampler)."""

from __future__ import annotations

import math

import optuna
import pytest

from medmerge.merge.recipe import SweepSpec
from medmerge.selection import optuna_search

NOWHERE = {"clinical": "/nonexistent/clinical", "instruct": "/nonexistent/instruct", "base": "/nonexistent/base"}


def spec():
    return SweepSpec(**NOWHERE, search="optuna", budget=8, methods={
        "slerp": {"t": {"low": 0.0, "high": 1.0, "gradient": 3}},
        "task_arithmetic": {"ratio": {"low": 0.0, "high": 1.0}, "lambda": {"low": 0.5, "high": 1.5}},
        "ties": {"ratio": {"low": 0.0, "high": 1.0}, "density": {"low": 0.01, "high": 1.0, "log": True}}})


def test_coarse_grid_takes_each_range_at_its_quartiles_and_a_gradient_flat():
    grid = optuna_search.coarse_grid(spec())
    slerp = [g for g in grid if g["method"] == "slerp"]
    assert slerp == [{"method": "slerp", **{f"slerp.t[{i}]": v for i in range(3)}} for v in (0.25, 0.5, 0.75)]
    ta = [(g["task_arithmetic.ratio"], g["task_arithmetic.lambda"]) for g in grid if g["method"] == "task_arithmetic"]
    assert ta == [(r, lam) for r in (0.25, 0.5, 0.75) for lam in (0.75, 1.0, 1.25)]
    # a log range is cut in log space: 0.01 · 100^f
    densities = sorted({g["ties.density"] for g in grid if g["method"] == "ties"})
    assert densities == pytest.approx([0.01 * 100 ** f for f in (0.25, 0.5, 0.75)])
    assert len(grid) == 3 + 9 + 9


def test_enqueued_coarse_points_are_the_first_trials_the_study_asks_for():
    sp = spec()
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna_search.make_sampler("tpe", 0))
    grid = optuna_search.coarse_grid(sp)
    for params in grid:
        study.enqueue_trial(params)
    asked = [optuna_search.suggest(study.ask(), sp) for _ in range(4)]
    assert asked[0] == ("slerp", {"t": [0.25, 0.25, 0.25]})
    assert asked[3] == ("task_arithmetic", {"ratio": 0.25, "lambda": 0.75})
    assert math.isclose(asked[2][1]["t"][1], 0.75)


@pytest.mark.parametrize("kind, cls, group", [("tpe", "TPESampler", False), ("tpe-group", "TPESampler", True),
                                              ("gp", "GPSampler", None)])
def test_samplers_by_name(kind, cls, group):
    s = optuna_search.make_sampler(kind, seed=1)
    assert type(s).__name__ == cls
    if group is not None:
        assert s._group is group and s._multivariate is True


def test_an_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="unknown sampler 'cmaes'; one of tpe, tpe-group, gp"):
        optuna_search.make_sampler("cmaes", seed=0)
