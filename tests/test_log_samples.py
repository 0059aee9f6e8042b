"""Per-sample records on request: ``log_samples`` keeps lm-eval's records (prompt, target, response, score),
writes them beside the report and as a candidate run's MLflow artifacts; by default no document text is
kept, written or logged anywhere (the report, the cache, MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medmerge.cli import main
from medmerge.evaluation.cache import EvalCache
from medmerge.evaluation.report import EvalReport
from medmerge.evaluation.runner import EvalSettings, evaluate_checkpoint
from medmerge.evaluation.tasks import resolve_data_dir

SAMPLE = resolve_data_dir("sample")


def _first_prompts(n: int) -> list[str]:
    with open(f"{SAMPLE}/ifeval/input_data.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["prompt"] for line, _ in zip(f, range(n))]


def _settings(**kw) -> EvalSettings:
    return EvalSettings(suites=("ifeval",), data_dir=SAMPLE, limit=2, max_gen_toks=4, **kw)


def test_cli_writes_records_only_when_asked(demo_models, tmp_path):
    prompts = _first_prompts(2)
    plain = tmp_path / "plain.json"
    assert main(["evaluate", str(demo_models["instruct"]), "--suite", "ifeval", "--data-dir", "sample", "--limit", "2",
                 "--max-gen-toks", "4", "--no-cache", "--out", str(plain)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.json"]
    assert not any(p[:40] in plain.read_text() for p in prompts)   # the report holds no document text
    asked = tmp_path / "asked.json"
    assert main(["evaluate", str(demo_models["instruct"]), "--suite", "ifeval", "--data-dir", "sample", "--limit", "2",
                 "--max-gen-toks", "4", "--no-cache", "--log-samples", "--out", str(asked)]) == 0
    records = [json.loads(x) for x in (tmp_path / "asked_samples" / "samples_mm_ifeval.jsonl").read_text().splitlines()]
    assert [r["doc"]["prompt"] for r in records] == prompts
    for r in records:   # lm-eval's record: the prompt sent, the target, the response, each metric's score
        assert r["arguments"]["gen_args_0"]["arg_0"] == r["doc"]["prompt"]
        assert r["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == 4
        assert isinstance(r["resps"][0][0], str) and r["target"] == "0"
        assert isinstance(r["prompt_level_strict_acc"], bool) and len(r["inst_level_strict_acc"]) >= 1
    assert not any(p[:40] in asked.read_text() for p in prompts)
    assert json.loads(asked.read_text())["settings"]["log_samples"] is True


def test_cached_records_come_back_only_when_asked(demo_models, tmp_path):
    cache = EvalCache(tmp_path / "cache")
    plain = evaluate_checkpoint(demo_models["instruct"], _settings(), cache)
    assert plain.tasks["mm_ifeval"].samples is None and plain.tasks["mm_ifeval"].samples_file is None
    assert not list((tmp_path / "cache").rglob("*.samples.jsonl"))
    # a result cached without its records is evaluated again when they are asked for, and then kept
    asked = evaluate_checkpoint(demo_models["instruct"], _settings(log_samples=True), cache)
    assert asked.cached_tasks == [] and len(asked.tasks["mm_ifeval"].samples) == 2
    assert asked.tasks["mm_ifeval"].metrics == plain.tasks["mm_ifeval"].metrics   # same score, same key
    again = evaluate_checkpoint(demo_models["instruct"], _settings(log_samples=True), cache)
    assert again.cached_tasks == ["mm_ifeval"] and again.tasks["mm_ifeval"].samples == asked.tasks["mm_ifeval"].samples
    quiet = evaluate_checkpoint(demo_models["instruct"], _settings(), cache)
    assert quiet.cached_tasks == ["mm_ifeval"]
    assert quiet.tasks["mm_ifeval"].samples is None and quiet.tasks["mm_ifeval"].samples_file is None


def test_mlflow_gets_records_only_when_asked(demo_models, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from medmerge.merge.recipe import parse_recipe
    from medmerge.tracking import registry

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("samples", artifact_location=str(tmp_path / "artifacts"))
    parent = c.create_run(exp, run_name="search").info.run_id
    recipe = parse_recipe({"merge_method": "linear", "models": [
        {"model": str(demo_models["clinical"]), "parameters": {"weight": 0.5}},
        {"model": str(demo_models["instruct"]), "parameters": {"weight": 0.5}}]})
    cache = EvalCache(tmp_path / "cache")
    plain = evaluate_checkpoint(demo_models["instruct"], _settings(), cache)
    asked = evaluate_checkpoint(demo_models["instruct"], _settings(log_samples=True), cache)
    # the pipeline hands reports from step to step as JSON (ZenML's store): the records travel by their file
    asked = EvalReport.model_validate_json(asked.model_dump_json())
    assert asked.tasks["mm_ifeval"].samples is None and asked.tasks["mm_ifeval"].samples_file

    def logged(report) -> dict[str, str]:
        rid = registry.log_candidate(parent, exp, "linear-0.5", recipe, report, uri)
        files = {}
        for a in c.list_artifacts(rid) + c.list_artifacts(rid, "samples"):
            if not a.is_dir:
                local = c.download_artifacts(rid, a.path, str(tmp_path))
                files[a.path] = Path(local).read_text(encoding="utf-8")
        return files

    prompts = _first_prompts(2)
    files = logged(plain)
    assert list(files) == ["report.json"]
    assert not any(p[:40] in text for text in files.values() for p in prompts)   # no document text at all
    files = logged(asked)
    assert sorted(files) == ["report.json", "samples/samples_mm_ifeval.jsonl"]
    records = [json.loads(x) for x in files["samples/samples_mm_ifeval.jsonl"].splitlines()]
    assert [r["doc"]["prompt"] for r in records] == prompts
    assert not any(p[:40] in files["report.json"] for p in prompts)


def test_run_config_default_is_off():
    from medmerge.evaluation.runner import EvalOptions

    assert EvalOptions().log_samples is False and EvalOptions(log_samples=True).eval_settings().log_samples is True
    with pytest.raises(ValueError, match="log_samples"):
        EvalOptions(log_samples="sometimes")


def test_a_file_where_the_records_go_is_refused_before_any_work(demo_models, tmp_path, capsys):
    (tmp_path / "r_samples").write_text("mine")
    code = main(["evaluate", str(demo_models["instruct"]), "--suite", "ifeval", "--data-dir", "sample", "--limit", "1",
                 "--log-samples", "--no-cache", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert f"--log-samples writes the records to {tmp_path / 'r_samples'}/, which is a file" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists() and (tmp_path / "r_samples").read_text() == "mine"
