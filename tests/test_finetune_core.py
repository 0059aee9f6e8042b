"""Phase two's core without ZenML or MLflow: config checks, data cleaning on the real MTS-Dialog train
split, subsets, batched generation, the learning-curve table and figure."""

from __future__ import annotations

import pytest
from factory import SHARED_DATA, llama_config, llama_state_dict, write_checkpoint
from pydantic import ValidationError

from medmerge.evaluation.report import EvalReport, MetricValue, TaskResult
from medmerge.finetune import (
    FinetuneConfig,
    FinetuneError,
    InitModel,
    SFTResult,
    curve_table,
    forgetting_table,
    learning_curves,
    load_data,
    subsample,
)
from medmerge.finetune.forgetting import forgetting_gate
from medmerge.generation.data import GenerationExample

DATA = SHARED_DATA
INIT = {"name": "clinical", "path": "/nonexistent"}


def cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"initialisations": [INIT], **kw})


@pytest.mark.parametrize("bad, message", [
    ({"initialisations": []}, "at least one initialisation"),
    ({"initialisations": [INIT, INIT]}, "repeated: clinical"),
    ({"initialisations": [{"name": "x"}]}, "exactly one of path or model_uri"),
    ({"initialisations": [{"name": "x", "path": "a", "model_uri": "models:/m/1"}]}, "exactly one of path or model_uri"),
    ({"initialisations": [{"name": "x", "model_uri": "runs:/abc/model"}]}, "models:/NAME/VERSION"),
    ({"initialisations": [{"name": "bad name", "path": "a"}]}, "initialisation name 'bad name'"),
    ({"shots": [8, -1]}, "positive integers or 'full'"),
    ({"shots": [8, 8]}, "repeat a size"),
    ({"log_samples": 500}, "less than or equal to 20"),
    ({"learning_rate": 1e-3}, "Extra inputs are not permitted"),
])
def test_config_errors_name_the_field(bad, message):
    with pytest.raises(ValidationError, match=message):
        FinetuneConfig.model_validate({"initialisations": [INIT], **bad})


def test_defaults_follow_the_forgetting_study():
    c = cfg()
    assert c.shots == (8, 16, 32, 64, 128, 256, 512, "full")
    assert (c.sft.epochs, c.sft.learning_rate, c.sft.per_device_batch * c.sft.grad_accum, c.sft.max_length) == \
        (15, 5e-6, 16, 8192)
    g = c.generation
    assert (g.batch_size, g.temperature, g.top_p, g.repetition_penalty, g.max_input_tokens, g.max_new_tokens) == \
        (16, 0.3, 0.9, 1.2, 8192, 8192)
    assert c.log_samples == 0  # clinical text stays out of MLflow unless asked


@pytest.mark.shared_data("mts_dialog")
def test_cleaning_real_mts_dialog_is_opt_in_and_names_dropped_ids(demo_models):
    inits = {"clinical": InitModel(name="clinical", path=str(demo_models["clinical"]), sha256="x", source="x")}
    raw = load_data(cfg(data_dir=str(DATA)), inits)
    assert len(raw.train) == 1201 and not raw.dropped and raw.max_input_tokens == 512
    clean = load_data(cfg(data_dir=str(DATA), drop_duplicate_pairs=True, drop_overlong=True, eval_limit=10), inits)
    dup = clean.dropped["train: duplicate (input, target) pair"]
    assert dup == ["train-1109"]  # the later copy of train-256's pair
    long = clean.dropped["train: input longer than 512 tokens"]
    assert long and len(clean.train) == 1201 - 1 - len(long)
    assert len(clean.eval) == 10 and clean.train_sha256 != raw.train_sha256
    # deterministic: the same inputs give the same content hash (what ZenML's cache keys on)
    assert load_data(cfg(data_dir=str(DATA), drop_duplicate_pairs=True, drop_overlong=True, eval_limit=10),
                     inits).train_sha256 == clean.train_sha256


def test_subsample_nested_and_too_big_is_an_error():
    data = load_data(cfg(data_dir="sample"))
    subsets = subsample(cfg(data_dir="sample", shots=[8, 16, "full"]), data)
    assert list(subsets) == ["8", "16", "full"] and subsets["16"][:8] == subsets["8"] and len(subsets["full"]) == 64
    assert subsample(cfg(data_dir="sample", shots=[8, 16, "full"]), data) == subsets
    with pytest.raises(FinetuneError, match=r"shots \[128\] exceed the 64 training examples"):
        subsample(cfg(data_dir="sample", shots=[8, 128]), data)


def tiny_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = llama_config(max_position_embeddings=64)
    d = write_checkpoint(tmp_path / "m", llama_state_dict(c, seed=1), c)
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32), AutoTokenizer.from_pretrained(d)


def test_generation_is_batched_seeded_and_caps_long_inputs(tmp_path):
    from factory import WORDS

    from medmerge.generation.generate import GenerationSettings, generate

    model, tok = tiny_model(tmp_path)
    words = [w for w in WORDS if w.startswith("w")][:20]
    exs = [GenerationExample(id=f"e{i}", input=" ".join(words[i % 5:i % 5 + 4]), target="x") for i in range(5)]
    exs.append(GenerationExample(id="long", input=" ".join(words * 10), target="x"))  # > the 64-token context
    s = GenerationSettings(batch_size=4, max_new_tokens=8)
    a = generate(model, tok, exs, s, progress=False)
    assert a.ids == [e.id for e in exs] and len(a.predictions) == 6 and a.truncated_inputs == 1
    assert generate(model, tok, exs, s, progress=False).predictions == a.predictions  # same seed, same text
    one_batch = generate(model, tok, exs, s.model_copy(update={"batch_size": 16, "temperature": 0.0}), progress=False)
    one_by_one = generate(model, tok, exs, s.model_copy(update={"batch_size": 1, "temperature": 0.0}), progress=False)
    assert one_batch.predictions == one_by_one.predictions  # greedy: left padding does not change the answer
    # max_new_tokens as large as the context: inputs still keep half of it, each batch gets what is left
    full = generate(model, tok, exs, s.model_copy(update={"max_new_tokens": 64}), progress=False)
    assert full.truncated_inputs == 1 and all(1 <= n < 64 for n in full.max_new_tokens)
    with pytest.raises(ValueError, match="leaves no room"):  # a template longer than the context
        generate(model, tok, exs, s, instruction=" ".join(["w1"] * 80), progress=False)


def report(ifs: float, se: float = 0.0) -> EvalReport:
    t = TaskResult(task="mm_ifeval", metrics={"prompt_level_strict_acc": MetricValue(value=ifs, stderr=se)},
                   n_samples=8, num_fewshot=0, config_hash="0" * 64)
    return EvalReport(model="m", model_fingerprint="f", suites=["ifeval"], tasks={"mm_ifeval": t},
                      scores={"if_score": MetricValue(value=ifs, stderr=se)}, lm_eval_version="x", medmerge_version="x", seconds=1.0)


def result(init, shots, n, comp, before=0.5, after=0.5) -> SFTResult:
    return SFTResult(init=init, shots=shots, n_examples=n, run_id="r", scores={"composite": comp},
                     bertscore_model="m", bertscore_layer=6, truncated_inputs=0,
                     forgetting=forgetting_gate(report(before), report(after), margin=0.02), after=report(after))


def test_learning_curve_table_and_figure(tmp_path):
    from PIL import Image

    from medmerge.selection.figures import plot_learning_curves

    rs = [result("clinical", "16", 16, 0.30), result("clinical", "8", 8, 0.20), result("clinical", "full", 64, 0.40),
          result("merge", "8", 8, 0.25, before=0.5, after=0.1), result("merge", "16", 16, 0.35)]
    curves = learning_curves(rs)
    assert curves == {"clinical": {8: 0.20, 16: 0.30, 64: 0.40}, "merge": {8: 0.25, 16: 0.35}}
    lines = curve_table(rs).splitlines()
    assert lines[0].split() == ["composite", "\\", "shots", "8", "16", "full"]
    assert lines[2].split() == ["clinical", "0.2000", "0.3000", "0.4000"]
    assert lines[3].split() == ["merge", "0.2500", "(forgot)", "0.3500"]
    ft = forgetting_table(rs)
    assert "merge after SFT on 8 examples: forgetting gate FAILED" in ft and ft.count("gate passed") == 4
    png = plot_learning_curves(curves, tmp_path / "lc.png", full_sizes={"clinical": 64})
    with Image.open(png) as im:
        assert im.size == (840, 540) and len(set(im.convert("L").getdata())) > 20  # drawn, not blank
        plain = im.convert("RGB").getdata()
        assert not any(r > 200 and g < 60 and b < 60 for r, g, b in plain)  # no red: nothing forgot
    marked = plot_learning_curves(curves, tmp_path / "lc2.png", forgot={"merge": {8}})
    with Image.open(marked) as im:  # the failed point is circled in pure red
        assert sum(1 for r, g, b in im.convert("RGB").getdata() if r > 200 and g < 60 and b < 60) > 30
    with pytest.raises(ValueError, match="no learning-curve points"):
        plot_learning_curves({}, tmp_path / "x.png")


def test_learning_curves_figure_draws_one_line_per_initialisation():
    from medmerge.selection.figures import learning_curves_figure

    curves = {"clinical": {16: 0.30, 8: 0.20, 64: 0.40}, "merge": {8: 0.25, 16: 0.35}}
    (ax,) = learning_curves_figure(curves, full_sizes={"clinical": 64}, forgot={"merge": {8}}).axes
    lines = {ln.get_label(): [tuple(xy) for xy in ln.get_xydata()] for ln in ax.lines}
    assert lines == {"clinical": [(8, 0.20), (16, 0.30), (64, 0.40)],   # sorted by training examples
                     "merge": [(8, 0.25), (16, 0.35)]}
    (circled,) = [c for c in ax.collections if c.get_label() == "forgetting gate failed"]
    assert [tuple(xy) for xy in circled.get_offsets()] == [(8, 0.25)]
    (full,) = [t for t in ax.texts if t.get_text() == "full"]
    assert full.xy == (64, 0.40)
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [8, 16, 64]
    assert ax.get_xlabel() == "training examples" and ax.get_ylabel() == "composite (0–1)"
