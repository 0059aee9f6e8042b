"""``batch: B`` in an Optuna search: trials asked B at a time and told together, so the search does not depend
on how many workers evaluate a round, nor on the order in which they finish."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError

from medmerge.merge.recipe import SweepSpec
from medmerge.selection import optuna_search


def _spec(**extra) -> SweepSpec:
    return SweepSpec(clinical="c", instruct="i", search="optuna", budget=9, seed=3,
                     methods={"linear": {"ratio": {"low": 0.0, "high": 1.0}},
                              "slerp": {"ratio": {"low": 0.0, "high": 1.0}}}, **extra)


def _report(cand) -> tuple[float, float]:
    """A deterministic two-objective score of a candidate's recipe (a trade-off along the ratio)."""
    w = cand.recipe.models[-1].parameters.get("weight", cand.recipe.parameters.get("t", 0.5)) if cand.recipe.models \
        else 0.5
    w = float(w if not isinstance(w, list) else w[0])
    return (math.sin(3 * w) + (0.1 if cand.method == "slerp" else 0.0), 1 - w * w)


def _search(spec: SweepSpec, evaluate_many) -> list[tuple[str, tuple]]:
    study = optuna_search.open_study(None, "rounds", spec.seed)
    done = optuna_search.run_rounds(study, spec, evaluate_many, lambda r: r)
    assert len(optuna_search.complete_trials(study)) == spec.budget
    return [(c.name, c.recipe.to_yaml(), r) for _, (c, r) in sorted(done.items())]


def _in_order(cands):
    return [_report(c) for c in cands]


def _workers(n: int, seed: int):
    """``n`` threads evaluate a round's candidates, finishing in a shuffled order."""
    rng = random.Random(seed)

    def evaluate_many(cands):
        order = list(range(len(cands)))
        rng.shuffle(order)
        with ThreadPoolExecutor(n) as ex:
            done = dict(zip(order, ex.map(lambda i: _report(cands[i]), order)))
        return [done[i] for i in range(len(cands))]

    return evaluate_many


def test_a_batched_search_is_the_same_on_any_number_of_workers():
    spec = _spec(batch=3)
    one = _search(spec, _in_order)
    assert len(one) == 9 and len({name for name, _, _ in one}) == 9
    for n, seed in [(2, 0), (3, 1), (4, 2)]:
        assert _search(spec, _workers(n, seed)) == one


def test_batch_one_is_the_sequential_search_and_a_batch_changes_what_is_asked():
    sequential = _search(_spec(), _in_order)
    assert _search(_spec(batch=1), _in_order) == sequential
    # TPE proposes a round's trials from the rounds before it: past its random start-up trials, a batch of
    # 3 asks other candidates than one at a time would
    assert [y for _, y, _ in _search(_spec(batch=3), _in_order)] != [y for _, y, _ in sequential]


def test_run_study_runs_in_rounds_and_yields_every_trial_in_order():
    spec = _spec(batch=4)
    calls = []

    def evaluate(cand):
        calls.append(cand.name)
        return _report(cand)

    rounds = []
    out = list(optuna_search.run_study(spec, evaluate, lambda r: r, storage=None, name="x", on_trial=rounds.append))
    assert rounds == [4, 8, 9]                  # told a round at a time: 4 + 4 + the budget's last one
    assert [c.name for c, _ in out] == calls    # each trial evaluated once, yielded in trial order
    assert len(out) == 9


@pytest.mark.parametrize("extra, message", [
    ({"batch": 0}, "batch 0: it must be at least 1"),
    ({"batch": -2}, "batch -2: it must be at least 1"),
])
def test_batch_domain(extra, message):
    with pytest.raises(ValidationError, match=message):
        _spec(**extra)


def test_batch_belongs_to_an_optuna_search():
    with pytest.raises(ValidationError, match="batch: applies to search: optuna"):
        SweepSpec(clinical="c", instruct="i", methods={"linear": {"ratio": [0.0, 0.5, 1.0]}}, batch=2)
