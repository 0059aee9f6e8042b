"""Picks and the promotion rule (medmerge.promotion): pure functions, no server."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from medmerge.promotion import PromotionError, Score, alias_for, check_picks, check_policy, choose, compare


def search(points: dict[str, tuple[str, float]], near: list[str], knee: str):
    cands = [SimpleNamespace(name=n, method=m, ratio=float(n.rsplit("-", 1)[1]), report=SimpleNamespace(medical_avg=med))
             for n, (m, med) in points.items()]
    results = SimpleNamespace(candidates=cands, by_name=lambda: {c.name: c for c in cands})
    return results, SimpleNamespace(near=near, knee=knee)


POINTS = {"linear-0.0": ("linear", 0.60), "linear-0.3": ("linear", 0.40), "linear-0.5": ("linear", 0.45), "linear-0.8": ("linear", 0.35),
          "slerp-0.4": ("slerp", 0.44), "slerp-0.6": ("slerp", 0.41), "ties-0.5": ("ties", 0.50)}
NEAR = ["linear-0.0", "linear-0.3", "linear-0.5", "linear-0.8", "slerp-0.4", "slerp-0.6"]   # ties-0.5: off it


def test_best_per_method_is_the_best_medical_avg_of_each_method_near_the_frontier():
    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    picks = choose("best_per_method", "none", frontier, results)
    # linear-0.0 (the clinical parent itself) is no merge; ties has no merge near the frontier: its best overall
    assert picks.picks == {"pick-linear": "linear-0.5", "pick-slerp": "slerp-0.4", "pick-ties": "ties-0.5"}
    assert picks.promote_candidate is None


def test_other_picks_and_policies():
    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    assert choose("knee", "knee", frontier, results).picks == {"pick-linear": "linear-0.8"}
    near = choose("near_frontier", "none", frontier, results).picks
    assert near["pick-linear-0_3"] == "linear-0.3" and len(near) == 6      # several per method: named by candidate
    named = choose(("ties-0.5", "slerp-0.6"), "best_medical", frontier, results)
    assert named.picks == {"pick-ties": "ties-0.5", "pick-slerp": "slerp-0.6"}
    assert named.promote_candidate == "linear-0.0"                         # the best Medical Avg of all
    assert choose("knee", ("linear-0.3", "slerp-0.4"), frontier, results).promote_candidate == "slerp-0.4"
    assert choose("knee", "knee", frontier, results).promote_candidate == "linear-0.8"
    assert alias_for("linear-0.5") == "pick-linear-0_5"


def test_names_that_are_no_candidate_and_unknown_policies_are_refused():
    results, frontier = search(POINTS, NEAR, knee="linear-0.8")
    with pytest.raises(PromotionError, match="picks: 'slerp-0.9' names no candidate"):
        choose(("slerp-0.9",), "none", frontier, results)
    with pytest.raises(PromotionError, match="promote: 'x' names no candidate"):
        choose("knee", ("x",), frontier, results)
    with pytest.raises(PromotionError, match="promote: unknown policy 'best'"):
        check_policy("best")
    with pytest.raises(PromotionError, match="picks: unknown policy 'best_of_all'"):
        check_picks("best_of_all")
    assert check_policy(["linear-0.5"]) == ("linear-0.5",) and check_picks("knee") == "knee"


def test_dominated_only_beyond_the_combined_stderr():
    staged = {"medical_avg": Score(value=0.50, stderr=0.03), "if_score": Score(value=0.30, stderr=0.04)}
    # worse on both, by more than sqrt(se_c^2 + se_s^2): dominated
    dominated, why = compare({"medical_avg": Score(value=0.40, stderr=0.03),
                              "if_score": Score(value=0.20, stderr=0.03)}, staged)
    assert dominated and "worse on medical_avg 0.4000 vs 0.5000 (±0.0424)" in why
    # worse on Medical Avg, better on IF score: a trade-off, not dominated
    dominated, why = compare({"medical_avg": Score(value=0.40, stderr=0.03),
                              "if_score": Score(value=0.45, stderr=0.03)}, staged)
    assert not dominated and "better on if_score" in why and "worse on medical_avg" in why
    # worse, but within the stderr: not dominated
    dominated, why = compare({"medical_avg": Score(value=0.47, stderr=0.03),
                              "if_score": Score(value=0.28, stderr=0.03)}, staged)
    assert not dominated and "within the stderr" in why
    # without stderrs any drop counts
    assert compare({"medical_avg": Score(value=0.49)}, {"medical_avg": Score(value=0.50)})[0]


@pytest.mark.parametrize("promote, says", [
    ("best", "promote: unknown policy 'best'"),
    (["clinical-99"], "promote: 'clinical-99' names no fine-tuned model of this run"),
    (["clinical-0"], "names no fine-tuned model"),          # shots 0 trains nothing: nothing to promote
])
def test_finetune_policy_is_checked_before_anything_runs(tmp_path, capsys, promote, says):
    import yaml

    from pipelines.finetune import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"parameters": {"config": {
        "initialisations": [{"name": "clinical", "path": "demo_out/models/clinical"}], "data_dir": "sample",
        "shots": [0, 8], "promote": promote, "output_dir": str(tmp_path / "out")}}}))
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("finetune: error:") and says in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_task_without_the_held_out_split_is_named():
    from medmerge.errors import MedmergeError
    from medmerge.finetune import FinetuneConfig, load_data

    cfg = FinetuneConfig.model_validate({"initialisations": [{"name": "c", "path": "/nonexistent"}],
                                         "data_dir": "sample", "eval_split": "validation"})
    with pytest.raises(MedmergeError, match="validation"):
        load_data(cfg)
