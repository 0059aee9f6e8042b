"""lm-eval's stock MMLU-Pro health beside the letter-likelihood task: ``mm_mmlu_pro_health_cot`` (lm-eval's
own YAML and utils, 5-shot chain of thought, generate_until, the "answer is (X)" regex, exact_match) sends
the same requests, byte for byte, gets the same responses and the same score as stock ``lm_eval`` on the
same documents and the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factory import shared_or_sample
from stock_lm_eval import prompts, run_cli, stock_task

from medmerge.cli import main
from medmerge.evaluation.runner import EvalSettings, evaluate_checkpoint
from medmerge.evaluation.tasks import EvalError, load_suites, task_spec

LETTERS = "ABCDEFGHIJ"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _hub_layout(r: dict) -> dict:
    """A normalised record as TIGER-Lab/MMLU-Pro lays it out (what stock lm-eval reads from the Hub)."""
    out = {"question_id": r.get("realidx", 0), "question": r["question"], "options": r["choices"],
           "answer": LETTERS[r["answer"]], "answer_index": r["answer"], "category": "health",
           "src": r.get("src", ""), "cot_content": r.get("cot_content", "")}  # the Hub's test rows: ""
    return out


@pytest.fixture
def data(tmp_path) -> Path:
    """4 test questions and 5 CoT exemplars (other health questions, each with a worked answer in
    MMLU-Pro's cot_content form), normalised, as a local data directory."""
    rows = _rows(shared_or_sample("mmlu_pro_health") / "mmlu_pro_health" / "test.jsonl")
    shots = []
    for r in rows[10:15]:
        letter = LETTERS[r["answer"]]
        shots.append({**r, "cot_content": f"A: Let's think step by step. {r['choices'][r['answer']]} fits best. "
                                          f"The answer is ({letter})."})
    d = tmp_path / "data"
    _write(d / "mmlu_pro_health" / "test.jsonl", rows[:4])
    _write(d / "mmlu_pro_health" / "validation.jsonl", shots)
    return d


def test_stock_mmlu_pro_health_equals_lm_eval(demo_models, data, tmp_path, monkeypatch):
    model = demo_models["clinical"]
    out = tmp_path / "r.json"
    assert main(["evaluate", str(model), "--suite", "mmlu_pro_stock", "--data-dir", str(data), "--max-gen-toks", "24",
                 "--log-samples", "--no-cache", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    ours = _rows(tmp_path / "r_samples" / "samples_mm_mmlu_pro_health_cot.jsonl")
    stock_dir = tmp_path / "stock_data"
    files = {split: _write(stock_dir / f"{split}.jsonl", [_hub_layout(r) for r in _rows(data / "mmlu_pro_health" / f)])
             for split, f in (("test", "test.jsonl"), ("validation", "validation.jsonl"))}
    task = stock_task(tmp_path / "stock", "mmlu_pro_health_local", "mmlu_pro/mmlu_pro_health.yaml", files)
    results, stock = run_cli(monkeypatch, model, task, tmp_path / "stock", tmp_path / "stock_out",
                             "--gen_kwargs", "max_gen_toks=24")
    stock = sorted(stock, key=lambda r: r["doc_id"])
    assert len(ours) == len(stock) == 4
    assert prompts(ours) == prompts(stock)
    context = prompts(ours)[0]["gen_args_0"]["arg_0"]
    assert context.startswith("The following are multiple choice questions (with answers) about health. Think step")
    assert context.count("Answer: Let's think step by step.") == 6 and context.count("The answer is (") == 5
    assert [r["resps"] for r in ours] == [r["resps"] for r in stock]
    assert [r["filtered_resps"] for r in ours] == [r["filtered_resps"] for r in stock]
    assert [r["exact_match"] for r in ours] == [r["exact_match"] for r in stock]
    task_report = report["tasks"]["mm_mmlu_pro_health_cot"]
    assert task_report["num_fewshot"] == 5 and list(task_report["metrics"]) == ["exact_match"]
    assert task_report["metrics"]["exact_match"]["value"] == results["results"][task]["exact_match,custom-extract"]


def test_the_filter_scores_what_the_regex_extracts(data):
    """The stock filter and metric on hand-written responses: the letter after "answer is", with or
    without parentheses; no match scores 0."""
    from lm_eval.api.task import ConfigurableTask

    task = ConfigurableTask(config=task_spec("mm_mmlu_pro_health_cot", data).config)
    doc = task.test_docs()[0]
    gold = doc["answer"]
    wrong = "A" if gold != "A" else "B"
    (ensemble,) = task._filters
    assert ensemble.name == "custom-extract"
    regex, take_first = (make() for make in ensemble.filters)
    texts = [f"so the answer is ({gold}).", f"The answer is {gold}", f"the answer is ({wrong})", "no idea"]
    extracted = list(take_first.apply(regex.apply([[t] for t in texts], [doc] * len(texts)), [doc] * len(texts)))
    assert extracted == [gold, gold, wrong, "[invalid]"]
    scores = [task.process_results(doc, [e])["exact_match"] for e in extracted]
    assert scores == [1.0, 1.0, 0.0, 0.0]


def test_clinical_suite_keeps_letter_likelihood_and_cot_needs_its_exemplars(demo_models, data, tmp_path):
    suites = load_suites()
    assert "mm_mmlu_pro_health" in suites["clinical"]["tasks"]
    assert "mm_mmlu_pro_health_cot" not in suites["clinical"]["tasks"]
    assert suites["mmlu_pro_stock"]["tasks"] == ["mm_mmlu_pro_health_cot"]
    (data / "mmlu_pro_health" / "validation.jsonl").unlink()
    with pytest.raises(EvalError, match=r"mm_mmlu_pro_health_cot needs data file .*mmlu_pro_health/validation.jsonl"
                                        r", which does not exist \(the CoT exemplars"):
        evaluate_checkpoint(demo_models["clinical"], EvalSettings(suites=("mmlu_pro_stock",), data_dir=str(data)))
