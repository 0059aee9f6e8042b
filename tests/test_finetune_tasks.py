"""Several generation tasks in one finetune run (the forgetting study's Table 2 across tasks).

Fast: the ``tasks:`` config (names, files, per-task settings, bad input) and the grouping of results.
Slow: the ZenML pipeline on a demo model, three tasks — MTS-Dialog and IU X-ray from the shared data and a
user's CSV file with its own column names — each fine-tuned and scored as a run of its own, then one run
holding Table 2 (rows initialisation x shots, columns the three tasks) and one learning-curve figure per task.
"""

from __future__ import annotations

import csv
import json
import re
import urllib.request

import pytest
import yaml

from medmerge.errors import MedmergeError
from medmerge.finetune import FinetuneConfig

INIT = [{"name": "c", "path": "/models/c"}]


def test_tasks_are_names_files_or_mappings_and_each_gets_its_own_config(tmp_path):
    cfg = FinetuneConfig.model_validate({
        "initialisations": INIT, "data_dir": "sample", "output_dir": str(tmp_path / "out"),
        "registered_model": "sft", "eval_split": "test",
        "tasks": ["mts_dialog", str(tmp_path / "my notes.csv"),
                  {"task": "indiana_cxr", "data_dir": "/data", "eval_split": "validation", "name": "cxr"}]})
    assert [t.label for t in cfg.tasks] == ["mts_dialog", "my_notes", "cxr"]
    per = dict(cfg.task_configs())
    assert list(per) == ["mts_dialog", "my_notes", "cxr"]
    assert per["cxr"].task == "indiana_cxr" and per["cxr"].data_dir == "/data" and per["cxr"].eval_split == "validation"
    assert per["mts_dialog"].data_dir == "sample" and per["mts_dialog"].eval_split == "test"   # inherited
    assert per["my_notes"].task == str(tmp_path / "my notes.csv")
    assert per["cxr"].output_dir == str(tmp_path / "out" / "cxr") and per["cxr"].registered_model == "sft-cxr"
    assert all(len(c.tasks) == 1 and c.task_label == label for label, c in per.items())
    with pytest.raises(MedmergeError, match="this config has 3 tasks; each task's own config is in task_configs"):
        cfg.task
    # ZenML hands the config to each step as its JSON dump: it must validate back to itself
    assert FinetuneConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert all(FinetuneConfig.model_validate(c.model_dump(mode="json")) == c for c in per.values())
    # one task: the config itself, unchanged (its steps, folders and model keep their names)
    one = FinetuneConfig.model_validate({"initialisations": INIT, "task": "mts_dialog"})
    assert one.task_configs() == [(None, one)]


def test_one_task_has_one_form_whichever_way_it_is_written():
    """``task: X`` is ``tasks: [X]``; a list of one task lifts its own settings to the run's, so the config is
    the run's as it stands (no step reads a per-task override)."""
    sugar = FinetuneConfig.model_validate({"initialisations": INIT, "task": "indiana_cxr", "data_dir": "/data",
                                           "eval_split": "validation"})
    listed = FinetuneConfig.model_validate({"initialisations": INIT, "tasks": [
        {"task": "indiana_cxr", "data_dir": "/data", "eval_split": "validation"}]})
    bare = FinetuneConfig.model_validate({"initialisations": INIT, "tasks": ["indiana_cxr"], "data_dir": "/data",
                                          "eval_split": "validation"})
    assert sugar == listed == bare
    assert sugar.tasks[0].settings() == {} and (sugar.task, sugar.task_label, sugar.data_dir) == (
        "indiana_cxr", "indiana_cxr", "/data")
    assert "task" not in sugar.model_dump() and FinetuneConfig.model_validate(sugar.model_dump(mode="json")) == sugar
    default = FinetuneConfig.model_validate({"initialisations": INIT})
    assert default.task == "mts_dialog" and default.task_configs() == [(None, default)]
    named = FinetuneConfig.model_validate({"initialisations": INIT, "task": {"task": "/d/my notes.csv", "name": "n"}})
    assert (named.task, named.task_label) == ("/d/my notes.csv", "n")
    assert FinetuneConfig.model_validate({"initialisations": INIT, "task": "/d/my notes.csv"}).task_label == "my_notes"
    with pytest.raises(Exception, match="frozen"):
        sugar.tasks = ()


def test_an_empty_task_list_is_named():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="tasks is empty"):
        FinetuneConfig.model_validate({"initialisations": INIT, "tasks": []})


@pytest.mark.parametrize("tasks, message", [
    (["mts_dialog", "mts_dialog"], "task names must be unique; repeated: mts_dialog"),
    ([{"task": "a.csv", "name": "x"}, {"task": "b.csv", "name": "x"}], "repeated: x"),
    ([{"task": "a.csv", "name": "bad name"}], "task name 'bad name'"),
    ([{"task": "a.csv", "splitt": "x"}], "splitt"),
])
def test_bad_task_lists_are_named(tasks, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)) as e:
        FinetuneConfig.model_validate({"initialisations": INIT, "tasks": tasks})
    assert message in str(e.value)


def test_task_and_tasks_together_is_an_error():
    with pytest.raises(MedmergeError, match="either task: .* or tasks:"):
        FinetuneConfig.model_validate({"initialisations": INIT, "task": "mts_dialog", "tasks": ["indiana_cxr"]})


def test_a_task_with_no_held_out_split_is_named(tmp_path):
    from medmerge.finetune import FinetuneError, load_data

    f = tmp_path / "notes.jsonl"
    f.write_text("".join(json.dumps({"id": str(i), "input": f"in {i}", "target": f"out {i}", "split": "train"}) + "\n"
                         for i in range(10)))
    cfg = FinetuneConfig.model_validate({"initialisations": INIT, "tasks": [str(f)], "eval_split": "test"})
    (_, one), = cfg.task_configs()
    with pytest.raises(FinetuneError, match=r"task .*notes.jsonl: no held-out examples in split 'test'"):
        load_data(one)


def test_results_are_grouped_by_task_in_config_order():
    from medmerge.finetune import SFTResult, group_by_task

    cfg = FinetuneConfig.model_validate({"initialisations": INIT, "tasks": ["b_task", "a_task"]})
    res = [SFTResult.model_construct(task=t, init="c", shots="8", n_examples=8, run_id=f"r{i}")
           for i, t in enumerate(("a_task", "b_task", "a_task"))]
    assert {t: len(v) for t, v in group_by_task(cfg, res).items()} == {"b_task": 1, "a_task": 2}
    assert list(group_by_task(cfg, res)) == ["b_task", "a_task"]
    with pytest.raises(MedmergeError, match="no results for task"):
        group_by_task(cfg, res[:1])


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.shared_data("mts_dialog", "indiana_cxr")
def test_three_tasks_in_one_run_log_table2_across_tasks(demo_models, mlflow_server, tmp_path, capsys):
    from factory import SHARED_DATA as DATA
    from mlflow_api import api, api_post

    from pipelines.finetune import run

    # the user's own file: other column names, a split column, CSV
    user = tmp_path / "radiology notes.csv"
    rows = [json.loads(line) for line in (DATA / "indiana_cxr" / "validation.jsonl").read_text().splitlines()]
    rows = [r for r in rows if len(r["input"]) < 400][:24]
    with user.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["report_id", "findings", "impression", "split"])
        for i, r in enumerate(rows):
            w.writerow([r["id"], r["input"], r["target"], "train" if i < 16 else "heldout"])
    uri = mlflow_server.uri
    cfg = dict(
        initialisations=[{"name": "clinical", "path": str(demo_models["clinical"])}],
        tasks=[{"task": "mts_dialog", "eval_split": "test1", "name": "mts"},
               "indiana_cxr",
               {"task": str(user), "name": "user_cxr", "id_field": "report_id", "input_field": "findings",
                "target_field": "impression", "eval_split": "heldout"}],
        data_dir=str(DATA), eval_limit=4, shots=[0, 8], drop_duplicate_pairs=True, drop_overlong=True,
        sft={"per_device_batch": 8, "grad_accum": 1, "max_length": 512, "min_steps_few_shot": 2,
             "gradient_checkpointing": False},
        generation={"max_new_tokens": 16},
        forgetting={"suites": ["ifeval"], "data_dir": "sample", "limit": 4, "max_gen_toks": 16},
        output_dir=str(tmp_path / "out"), registered_model="tasks-sft", experiment="tasks-finetune",
        tracking_uri=uri)
    path = tmp_path / "tasks.yaml"
    path.write_text(yaml.safe_dump({"parameters": {"config": cfg}}))
    out = run(str(path))
    printed = capsys.readouterr().out
    tasks = ["mts", "indiana_cxr", "user_cxr"]
    assert list(out["tasks"]) == tasks and "Table 2 across tasks" in printed

    # each task ran as a run of its own: its steps carry its name, its model is registered apart
    steps = out["run"].steps
    assert {f"sft_{t}_clinical_8" for t in tasks} | {"compare_tasks"} <= set(steps)
    for t in tasks:
        s = out["tasks"][t]["summary"]
        assert set(s.versions) == {"clinical-8"} and set(s.curves["clinical"]) == {0, 8}
        versions = api(uri, "model-versions/search", filter=f"name='tasks-sft-{t}'")["model_versions"]
        assert len(versions) == 1 and {"key": "task", "value": t} in versions[0]["tags"]
        assert (tmp_path / "out" / t / "sft" / "clinical-8" / "config.json").exists()

    # Table 2: rows init x shots, a column per task, the best of each column marked
    cross = out["table2"]
    t2 = cross.table2_json
    assert t2["tasks"] == tasks and [(r["init"], r["shots"]) for r in t2["rows"]] == [("clinical", "0"),
                                                                                    ("clinical", "8")]
    for t in tasks:
        col = [r["cells"][t] for r in t2["rows"]]
        assert sum(c["best"] for c in col) >= 1
        want = {r.shots: r.scores["composite"] for r in _results(out, t)}
        assert [c["value"] for c in col] == [want["0"], want["8"]]
    assert cross.table2.splitlines()[0] == "| initialisation | shots | mts | indiana_cxr | user_cxr |"

    # MLflow: the cross-task run holds Table 2 and one learning-curve figure per task, no clinical text
    exp = api(uri, "experiments/get-by-name", experiment_name="tasks-finetune")["experiment"]["experiment_id"]
    runs = api_post(uri, "runs/search", {"experiment_ids": [exp]})["runs"]
    tagged = [r for r in runs if {"key": "medmerge.kind", "value": "tasks"} in r["data"]["tags"]]
    assert len(tagged) == 1 and tagged[0]["info"]["status"] == "FINISHED"
    rid = tagged[0]["info"]["run_id"]
    files = {f["path"] for f in api(uri, "artifacts/list", run_id=rid)["files"]}
    figs = {f["path"]: int(f["file_size"]) for f in api(uri, "artifacts/list", run_id=rid, path="figures")["files"]}
    assert {"table2.md", "table2.json"} <= files
    assert set(figs) == {f"figures/learning_curves_{t}.png" for t in tasks} and min(figs.values()) > 10_000
    md = urllib.request.urlopen(f"{uri}/get-artifact?path=table2.md&run_uuid={rid}", timeout=30).read().decode()
    assert md == cross.table2
    parents = [r for r in runs if not any(t["key"] == "mlflow.parentRunId" for t in r["data"]["tags"])]
    assert len(parents) == 4 and all(r["info"]["status"] == "FINISHED" for r in parents)  # 3 tasks + Table 2
def _results(out, task):
    steps = out["run"].steps
    return [steps[n].output.load() for n in steps if n.startswith(f"evaluate_{task}_")]
