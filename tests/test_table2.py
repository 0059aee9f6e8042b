"""Table 2 (medmerge.finetune.table2) and shots: 0 in the finetune config: pure, no ZenML or MLflow."""

from __future__ import annotations

from types import SimpleNamespace

from medmerge.finetune import ZERO_SHOT, FinetuneConfig, load_data, subsample, table2


def r(init, shots, comp, passed=True):
    return SimpleNamespace(init=init, shots=shots, scores={"composite": comp}, forgetting=SimpleNamespace(passed=passed))


def test_rows_are_init_by_shots_columns_tasks_best_marked():
    t = table2.build({"mts_dialog": [r("clinical", "8", 0.20), r("clinical", ZERO_SHOT, 0.10), r("pick-slerp", "8", 0.30),
                                     r("pick-slerp", ZERO_SHOT, 0.12, passed=False)],
                      "aci_bench": [r("clinical", "8", 0.40), r("clinical", ZERO_SHOT, 0.05), r("pick-slerp", "8", 0.35)]})
    assert t["tasks"] == ["mts_dialog", "aci_bench"]
    assert [(row["init"], row["shots"]) for row in t["rows"]] == [("clinical", "0"), ("clinical", "8"),
                                                                  ("pick-slerp", "0"), ("pick-slerp", "8")]
    best = {(row["init"], row["shots"], task) for row in t["rows"] for task, c in row["cells"].items() if c["best"]}
    assert best == {("pick-slerp", "8", "mts_dialog"), ("clinical", "8", "aci_bench")}
    md = table2.to_markdown(t).splitlines()
    assert md[0] == "| initialisation | shots | mts_dialog | aci_bench |"
    assert md[2] == "| clinical | 0 | 0.1000 | 0.0500 |"
    assert md[3] == "| clinical | 8 | 0.2000 | **0.4000** |"
    assert md[4] == "| pick-slerp | 0 | 0.1200 (forgot) |  |"            # a task it was not run on: empty


def test_zero_shots_is_a_subset_of_nothing():
    cfg = FinetuneConfig.model_validate({"initialisations": [{"name": "c", "path": "/nonexistent"}],
                                         "data_dir": "sample", "shots": [0, 8]})
    subsets = subsample(cfg, load_data(cfg))
    assert subsets[ZERO_SHOT] == [] and len(subsets["8"]) == 8
    only_zero = cfg.model_copy(update={"shots": (0,)})
    assert subsample(only_zero, load_data(only_zero)) == {ZERO_SHOT: []}
