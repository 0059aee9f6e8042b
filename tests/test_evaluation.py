"""Evaluation: scores are the stated means, a fixed-choice model scores what it must, sweeps
evaluate in memory with the same numbers as on disk, and the cache keys on candidate identity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from factory import shared_or_sample
from safetensors.torch import load_file, save_file

from medmerge.cli import main
from medmerge.evaluation.cache import EvalCache
from medmerge.evaluation.runner import EvalSettings, evaluate_checkpoint
from medmerge.evaluation.scores import if_score, medical_avg
from medmerge.evaluation.sweep_eval import evaluate_sweep
from medmerge.evaluation.tasks import EvalError, task_spec
from medmerge.merge.recipe import SweepSpec

CLINICAL_DATA = ("mmlu", "mmlu_pro_health", "medmcqa", "medqa", "pubmedqa")


def test_scores_are_the_stated_means():
    assert medical_avg({"a": 0.2, "b": 0.4, "c": 0.9}) == pytest.approx(0.5)
    assert if_score({"prompt_level_strict_acc": 0.3, "inst_level_strict_acc": 0.5, "prompt_level_loose_acc": 1.0}) \
        == pytest.approx(0.4)


def constant_model(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose output distribution is uniform: every continuation is equally likely,
    so a multiple-choice task always picks option A (lm-eval's argmax takes the first of equal scores)."""
    shutil.copytree(src, dst)
    sd = load_file(str(dst / "model.safetensors"))
    sd["lm_head.weight"] = torch.zeros_like(sd["lm_head.weight"])
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_fixed_choice_model_scores_the_share_of_a_answers(demo_models, tmp_path):
    data = shared_or_sample(*CLINICAL_DATA)  # the real data; the packaged sample on a clone without it
    model = constant_model(demo_models["clinical"], tmp_path / "const")
    settings = EvalSettings(suites=("clinical",), data_dir=str(data), limit=40)
    report = evaluate_checkpoint(model, settings)
    for task in ("mm_medqa_4options", "mm_mmlu_anatomy", "mm_medmcqa"):
        spec = task_spec(task, data)
        rows = [json.loads(x) for x in open(spec.data_files[spec.config["test_split"]])]
        if task == "mm_mmlu_anatomy":
            rows = [r for r in rows if r["subject"] == "anatomy"]
        expected = sum(r["answer"] == 0 for r in rows[:40]) / len(rows[:40])
        assert report.tasks[task].metrics["acc"].value == pytest.approx(expected), task
    accs = {t: r.metrics["acc"].value for t, r in report.tasks.items()}
    assert report.medical_avg == pytest.approx(sum(accs.values()) / len(accs))
    assert len(accs) == 10
    # the score is computed once, with its stderr (lm-eval's unweighted mean of the tasks' stderrs)
    ses = [r.metrics["acc"].stderr for r in report.tasks.values()]
    assert list(report.scores) == ["medical_avg"] and report.scores["medical_avg"].value == report.medical_avg
    assert report.scores["medical_avg"].stderr == pytest.approx(sum(se * se for se in ses) ** 0.5 / 10)


def test_evaluate_cli_writes_the_report(demo_models, tmp_path, capsys):
    out = tmp_path / "r.json"
    data = shared_or_sample(*CLINICAL_DATA, "ifeval")
    code = main(["evaluate", str(demo_models["instruct"]), "--suite", "clinical,ifeval", "--data-dir", str(data),
                 "--limit", "4", "--max-gen-toks", "32", "--out", str(out), "--no-cache"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Medical Avg" in printed and "IF score" in printed and "stderr" in printed
    r = json.loads(out.read_text())
    assert set(r["tasks"]) >= {"mm_ifeval", "mm_pubmedqa", "mm_mmlu_pro_health"}
    ife = r["tasks"]["mm_ifeval"]["metrics"]
    assert r["scores"]["if_score"]["value"] == pytest.approx((ife["prompt_level_strict_acc"]["value"] + ife["inst_level_strict_acc"]["value"]) / 2)
    assert r["lm_eval_version"] and len(r["model_fingerprint"]) == 64 and r["seconds"] > 0
    assert all(len(t["config_hash"]) == 64 for t in r["tasks"].values())


@pytest.fixture
def sweep_spec(demo_models):
    return SweepSpec(clinical=str(demo_models["clinical"]), instruct=str(demo_models["instruct"]),
                     methods=("linear", "slerp"), ratios=(0.0, 0.5, 1.0))


def _settings():
    from importlib.resources import files

    return EvalSettings(suites=("clinical",), data_dir=str(files("medmerge") / "resources" / "eval_sample"), limit=6)


def test_in_memory_sweep_equals_disk_and_writes_nothing(sweep_spec, tmp_path, monkeypatch):
    from medmerge.merge.engine import sweep

    monkeypatch.chdir(tmp_path)
    before = set(Path(sweep_spec.clinical).parent.iterdir())
    in_memory = {c.name: r for c, r in evaluate_sweep(sweep_spec, _settings(), quiet=True)}
    assert list(tmp_path.iterdir()) == [] and set(Path(sweep_spec.clinical).parent.iterdir()) == before
    written = sweep(sweep_spec, tmp_path / "cands", quiet=True)
    for name, report in in_memory.items():
        disk = evaluate_checkpoint(written[name], _settings())
        for task, res in report.tasks.items():
            assert res.metrics == disk.tasks[task].metrics, (name, task)
        assert report.medical_avg == disk.medical_avg


def test_ifeval_in_memory_equals_disk(demo_models, tmp_path, monkeypatch):
    """The generation task too: each candidate merged in memory writes the same responses, token for
    token, as its checkpoint on disk, so every IFEval metric is equal."""
    from lm_eval.models.huggingface import HFLM

    from medmerge.merge.engine import sweep

    generations: list[list[str]] = []
    real = HFLM.generate_until

    def recording(self, requests, *a, **k):
        out = real(self, requests, *a, **k)
        generations.append(list(out))
        return out

    monkeypatch.setattr(HFLM, "generate_until", recording)
    spec = SweepSpec(clinical=str(demo_models["clinical"]), instruct=str(demo_models["instruct"]),
                     methods=("linear", "slerp"), ratios=(0.5,))
    settings = EvalSettings(suites=("ifeval",), data_dir=_settings().data_dir, limit=6, max_gen_toks=24)
    in_memory = {c.name: (r, generations.pop()) for c, r in evaluate_sweep(spec, settings, quiet=True)}
    assert list(in_memory) == ["linear-0.5", "slerp-0.5"] and not generations
    written = sweep(spec, tmp_path / "cands", quiet=True)
    for name, (report, texts) in in_memory.items():
        disk = evaluate_checkpoint(written[name], settings)
        assert generations.pop() == texts and len(texts) == 6 and any(t.strip() for t in texts), name
        assert report.tasks["mm_ifeval"].metrics == disk.tasks["mm_ifeval"].metrics, name
        assert report.if_score == disk.if_score is not None
    assert in_memory["linear-0.5"][1] != in_memory["slerp-0.5"][1]  # two different models really ran


def test_rerun_hits_cache_and_changed_parent_misses(sweep_spec, demo_models, tmp_path):
    cache = EvalCache(tmp_path / "cache")
    first = {c.name: r for c, r in evaluate_sweep(sweep_spec, _settings(), cache, quiet=True)}
    assert cache.hits == 0 and all(not r.cached_tasks for r in first.values())
    cache2 = EvalCache(tmp_path / "cache")
    second = {c.name: r for c, r in evaluate_sweep(sweep_spec, _settings(), cache2, quiet=True)}
    assert cache2.misses == 0 and cache2.hits == 6 * 10
    assert all(len(r.cached_tasks) == 10 for r in second.values())
    assert {n: r.medical_avg for n, r in first.items()} == {n: r.medical_avg for n, r in second.items()}
    # change one parent's weights: every candidate that depends on it misses
    changed = tmp_path / "instruct2"
    shutil.copytree(demo_models["instruct"], changed)
    sd = load_file(str(changed / "model.safetensors"))
    sd["model.norm.weight"] = sd["model.norm.weight"] * 1.01
    save_file(sd, str(changed / "model.safetensors"), metadata={"format": "pt"})
    spec3 = sweep_spec.model_copy(update={"instruct": str(changed)})
    cache3 = EvalCache(tmp_path / "cache")
    third = {c.name: r for c, r in evaluate_sweep(spec3, _settings(), cache3, quiet=True)}
    assert cache3.hits == 0 and cache3.misses == 6 * 10
    assert third["linear-0.0"].medical_avg == first["linear-0.0"].medical_avg  # clinical alone: same numbers


def test_hub_dataset_unreachable_is_a_clear_error(demo_models, tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE: the Hub path must fail cleanly, not with a traceback
    code = main(["evaluate", str(demo_models["base"]), "--suite", "ifeval", "--limit", "1",
                 "--out", str(tmp_path / "r.json"), "--no-cache"])
    assert code == 2
    err = capsys.readouterr().err
    assert "could not load the Hub datasets (google/IFEval) for mm_ifeval" in err and "--data-dir" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("case", ["missing_file", "unknown_task", "wrong_fields", "unknown_suite", "bad_json"])
def test_bad_evaluation_input(case, demo_models, tmp_path, capsys):
    data = tmp_path / "data"
    from importlib.resources import files

    shutil.copytree(Path(str(files("medmerge") / "resources" / "eval_sample")), data)
    suite = "clinical"
    if case == "missing_file":
        (data / "medqa" / "test.jsonl").unlink()
        expected = "medqa/test.jsonl, which does not exist"
    elif case == "unknown_task":
        with pytest.raises(EvalError, match="unknown task 'mm_nope'"):
            task_spec("mm_nope", data)
        return
    elif case == "wrong_fields":
        rows = [json.loads(x) for x in open(data / "pubmedqa" / "test.jsonl")]
        for r in rows:
            r.pop("context")
        (data / "pubmedqa" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        expected = "pubmedqa/test.jsonl (task mm_pubmedqa): record 0 lacks field(s) context"
    elif case == "bad_json":
        (data / "medmcqa" / "validation.jsonl").write_text('{"question": "x",\n')
        expected = "medmcqa/validation.jsonl (task mm_medmcqa): line 1 is not valid JSON"
    else:
        suite = "clinicall"
        expected = "unknown suite 'clinicall'"
    code = main(["evaluate", str(demo_models["base"]), "--suite", suite, "--data-dir", str(data), "--limit", "2",
                 "--out", str(tmp_path / "r.json"), "--no-cache"])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
