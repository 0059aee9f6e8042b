"""Prompt format as lm-eval's own options: with ``chat_template: true`` medmerge sends lm-eval exactly the
requests stock ``lm_eval --apply_chat_template`` sends, byte for byte, on the demo instruct model (whose
tokenizer carries a chat template), for IFEval and a multiple-choice task with shots as chat turns; the
setting is recorded in the report and keys the evaluation cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factory import shared_or_sample
from stock_lm_eval import prompts, run_cli, stock_task

from medmerge.cli import main
from medmerge.evaluation.cache import EvalCache
from medmerge.evaluation.runner import EvalOptions, EvalSettings, ModelEvaluator, evaluate_checkpoint, load_model
from medmerge.evaluation.tasks import EvalError


def _head(src: Path, dst: Path, n: int, where: dict | None = None) -> Path:
    rows = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    rows = [r for r in rows if all(r.get(k) == v for k, v in (where or {}).items())][:n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return dst


@pytest.fixture
def data(tmp_path) -> Path:
    """A data directory with 3 IFEval prompts and 5 MMLU anatomy questions (+ its 5 dev shots)."""
    src = shared_or_sample("mmlu", "ifeval")
    d = tmp_path / "data"
    _head(src / "ifeval" / "input_data.jsonl", d / "ifeval" / "input_data.jsonl", 3)
    _head(src / "mmlu" / "test.jsonl", d / "mmlu" / "test.jsonl", 5, {"subject": "anatomy"})
    _head(src / "mmlu" / "dev.jsonl", d / "mmlu" / "dev.jsonl", 5, {"subject": "anatomy"})
    return d


def test_ifeval_requests_equal_lm_eval_apply_chat_template(demo_models, data, tmp_path, monkeypatch, capsys):
    from medmerge.evaluation.ifeval_offline import ifeval_utils

    model = demo_models["instruct"]
    out = tmp_path / "r.json"
    assert main(["evaluate", str(model), "--suite", "ifeval", "--data-dir", str(data), "--max-gen-toks", "8",
                 "--chat-template", "true", "--log-samples", "--no-cache", "--out", str(out)]) == 0
    ours = [json.loads(x) for x in (tmp_path / "r_samples" / "samples_mm_ifeval.jsonl").read_text().splitlines()]
    ifeval_utils()  # the stock checker counts sentences with the local Punkt model too (no download)
    task = stock_task(tmp_path / "stock", "ifeval_local", "ifeval/ifeval.yaml",
                      {"train": data / "ifeval" / "input_data.jsonl"})
    results, stock = run_cli(monkeypatch, model, task, tmp_path / "stock", tmp_path / "stock_out",
                             "--apply_chat_template", "--gen_kwargs", "max_gen_toks=8")
    assert len(ours) == len(stock) == 3
    assert prompts(ours) == prompts(stock)
    first = prompts(ours)[0]["gen_args_0"]["arg_0"]
    assert first.startswith("### Instruction:\n") and first.endswith("\n### Response:\n")  # the template ran
    assert [r["resps"] for r in ours] == [r["resps"] for r in sorted(stock, key=lambda r: r["doc_id"])]
    report = json.loads(out.read_text())
    for metric, m in report["tasks"]["mm_ifeval"]["metrics"].items():
        assert m["value"] == pytest.approx(results["results"][task][f"{metric},none"]), metric
    s = report["settings"]
    assert s["chat_template"] == "true" and s["chat_template_applied"] is True and s["fewshot_as_multiturn"] is True
    assert len(s["chat_template_sha256"]) == 64


def test_multiple_choice_shots_as_turns_equal_lm_eval(demo_models, data, tmp_path, monkeypatch):
    """MMLU anatomy, 2 shots as chat turns and a system instruction: the same log-likelihood requests
    (context and continuation) and the same accuracy as stock lm-eval."""
    model, tok = load_model(demo_models["instruct"])
    system = "You are a careful medical examiner."
    settings = EvalSettings(suites=("clinical",), data_dir=str(data), chat_template="true",
                            system_instruction=system, log_samples=True)
    ev = ModelEvaluator(model, tok, settings)
    ours = ev.run([ev.spec("mm_mmlu_anatomy")], 2)["mm_mmlu_anatomy"]
    task = stock_task(tmp_path / "stock", "mmlu_anatomy_local", "mmlu/default/mmlu_anatomy.yaml",
                      {"test": data / "mmlu" / "test.jsonl", "dev": data / "mmlu" / "dev.jsonl"})
    results, stock = run_cli(monkeypatch, demo_models["instruct"], task, tmp_path / "stock", tmp_path / "stock_out",
                             "--apply_chat_template", "--num_fewshot", "2", "--system_instruction", system)
    assert len(ours.samples) == len(stock) == 5
    assert prompts(ours.samples) == prompts(stock)
    context = prompts(ours.samples)[0]["gen_args_0"]["arg_0"]
    # the system message (instruction, then the task's description), each shot as a user turn and an
    # assistant turn ending in </s>, then the question as the last user turn
    assert context.startswith(system + "\n\nThe following are multiple choice questions")
    assert context.count("### Instruction:\n") == 3 and context.count("</s>") == 2
    assert context.endswith("\nAnswer:\n### Response:\n")
    assert ours.metrics["acc"].value == pytest.approx(results["results"][task]["acc,none"])


def test_prompt_format_keys_the_cache_and_auto_falls_back(demo_models, data, tmp_path):
    """Plain and chat-templated prompts are cached apart; ``auto`` on a tokenizer without a template is
    plain prompts (the same cache entry), and ``true`` there is a clear error."""
    cache = EvalCache(tmp_path / "cache")

    def run(model_dir, **kw):
        return evaluate_checkpoint(model_dir, EvalSettings(suites=("ifeval",), data_dir=str(data), limit=1,
                                                           max_gen_toks=4, **kw), cache=cache)

    plain = run(demo_models["instruct"])
    templated = run(demo_models["instruct"], chat_template="true")
    assert cache.hits == 0 and plain.settings["chat_template_applied"] is False
    assert run(demo_models["instruct"], chat_template="auto").cached_tasks == ["mm_ifeval"]  # = templated
    assert run(demo_models["instruct"], chat_template="true", system_instruction="Be brief.").cached_tasks == []
    assert templated.settings["chat_template_applied"] is True
    no_template = tmp_path / "no_template"
    import shutil

    shutil.copytree(demo_models["instruct"], no_template)
    (no_template / "chat_template.jinja").unlink()
    assert run(no_template, chat_template="auto").settings["chat_template_applied"] is False
    with pytest.raises(EvalError, match="chat_template: true, but the model's tokenizer has no chat template"):
        run(no_template, chat_template="true")


def test_run_config_fields_and_bad_values():
    opts = EvalOptions(chat_template=True, system_instruction="Be brief.")
    assert opts.chat_template == "true" and opts.eval_settings().system_instruction == "Be brief."
    assert EvalOptions(chat_template=None).chat_template == "none"
    assert EvalOptions().eval_settings().chat_template == "none" and EvalOptions().log_samples is False
    with pytest.raises(ValueError, match="chat_template must be one of none, auto, true; got 'sometimes'"):
        EvalOptions(chat_template="sometimes")
    with pytest.raises(ValueError, match="fewshot_as_multiturn needs a chat template"):
        EvalOptions(fewshot_as_multiturn=True)


def test_cli_refuses_multiturn_without_template(demo_models, tmp_path, capsys):
    code = main(["evaluate", str(demo_models["instruct"]), "--suite", "ifeval", "--data-dir", "sample",
                 "--fewshot-as-multiturn", "--no-cache", "--out", str(tmp_path / "r.json")])
    assert code == 2
    assert "fewshot_as_multiturn needs a chat template" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_fully_cached_checkpoint_is_not_loaded(demo_models, data, tmp_path, monkeypatch):
    """Every task cached: the report comes from the cache without loading the model, with the settings the
    evaluating run resolved; one task missing: the model loads and the cache's counters count once."""
    import medmerge.evaluation.runner as runner

    cache = EvalCache(tmp_path / "cache")
    settings = EvalSettings(suites=("ifeval",), data_dir=str(data), limit=1, max_gen_toks=4)
    first = evaluate_checkpoint(demo_models["instruct"], settings, cache)

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(runner, "load_model", no_load)
    again = evaluate_checkpoint(demo_models["instruct"], settings, EvalCache(tmp_path / "cache"))
    assert again.cached_tasks == ["mm_ifeval"] and again.tasks == first.tasks and again.if_score == first.if_score
    assert {k: v for k, v in again.settings.items()} == first.settings
    missing = EvalCache(tmp_path / "cache")
    with pytest.raises(AssertionError, match="the model was loaded"):
        evaluate_checkpoint(demo_models["instruct"], EvalSettings(suites=("ifeval",), data_dir=str(data), limit=2,
                                                                  max_gen_toks=4), missing)
    assert (missing.hits, missing.misses) == (0, 0)   # the model-free look-up left no count behind
