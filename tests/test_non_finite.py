"""No non-finite model is scored or trained into a checkpoint: NaN weights stop an evaluation and an SFT with
an error naming the model, and nothing is cached or written."""

from __future__ import annotations

import pytest
import torch
from factory import PACKAGED_SAMPLE, llama_config, llama_state_dict, write_checkpoint


def _tiny(tmp_path, name: str, poison: float | None):
    """A tiny llama checkpoint; ``poison`` (NaN or inf) written into one weight of its last layer."""
    cfg = llama_config()
    sd = llama_state_dict(cfg, seed=0)
    if poison is not None:
        sd["model.layers.1.mlp.down_proj.weight"][0, 0] = poison
    return write_checkpoint(tmp_path / name, sd, cfg)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_an_evaluation_with_non_finite_logits_names_the_model_and_caches_nothing(tmp_path, poison):
    from medmerge.errors import MedmergeError
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import (
        EvalSettings,
        NonFiniteLogitsError,
        evaluate_checkpoint,
    )

    model = _tiny(tmp_path, "poisoned", poison)
    settings = EvalSettings(suites=("clinical",), data_dir=str(PACKAGED_SAMPLE), limit=2)
    cache = EvalCache(tmp_path / "cache")
    with pytest.raises(NonFiniteLogitsError, match=rf"evaluating {model}: the model's logits are not finite \((nan|inf)"):
        evaluate_checkpoint(model, settings, cache)
    assert issubclass(NonFiniteLogitsError, MedmergeError)     # one line and exit 2 at the CLI and in a step
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*.json"))
    # the same tiny model with finite weights is scored
    report = evaluate_checkpoint(_tiny(tmp_path, "finite", None), settings, cache)
    assert 0.0 <= report.medical_avg <= 1.0


def test_an_in_memory_candidate_with_non_finite_logits_is_named(tmp_path):
    from medmerge.evaluation.runner import (
        EvalSettings,
        ModelEvaluator,
        NonFiniteLogitsError,
        load_model,
    )

    settings = EvalSettings(suites=("clinical",), data_dir=str(PACKAGED_SAMPLE), limit=2)
    model, tok = load_model(_tiny(tmp_path, "finite", None), "cpu")
    ev = ModelEvaluator(model, tok, settings)
    assert ev.evaluate("linear-0.3", "candidate:a").medical_avg is not None

    def swap_in_nan():   # a candidate's weights swapped into the resident model, as a sweep does
        with torch.no_grad():
            model.model.norm.weight[0] = float("nan")

    with pytest.raises(NonFiniteLogitsError, match="evaluating linear-0.5: the model's logits are not finite"):
        ev.evaluate("linear-0.5", "candidate:b", prepare=swap_in_nan)


def _examples():
    from medmerge.generation.data import GenerationExample

    return [GenerationExample(id=str(i), input=f"w{i} w{i + 1} w{i + 2}", target=f"w{i + 3} w{i + 4}", extra={})
            for i in range(4)]


def test_sft_whose_loss_becomes_non_finite_stops_and_writes_nothing(tmp_path):
    from medmerge.finetune.sft import NonFiniteTrainingError, SFTSettings, finetune

    settings = SFTSettings(per_device_batch=2, grad_accum=1, max_length=32, gradient_checkpointing=False,
                           learning_rate=1e-3)
    out = tmp_path / "sft" / "clinical-8"
    with pytest.raises(NonFiniteTrainingError, match=rf"SFT of .*poisoned into {out}: the training loss became "
                                                     r"nan at step 1; nothing was written"):
        finetune(_tiny(tmp_path, "poisoned", float("nan")), _examples(), out, settings, max_steps=3)
    assert not out.exists() and list((tmp_path / "sft").glob(".medmerge-tmp-*")) == []
    # finite weights train and are written
    res = finetune(_tiny(tmp_path, "finite", None), _examples(), out, settings, max_steps=2)
    assert res.steps == 2 and all(map(torch.isfinite, map(torch.tensor, res.losses)))
    assert (out / "config.json").exists()


def test_trained_weights_are_checked_before_they_are_written(tmp_path):
    from transformers import AutoModelForCausalLM

    from medmerge.finetune.sft import NonFiniteTrainingError, check_finite_weights

    model = AutoModelForCausalLM.from_pretrained(_tiny(tmp_path, "finite", None))
    check_finite_weights(model, "clinical-8")                     # finite: nothing raised
    with torch.no_grad():
        model.lm_head.weight[3, 1] = float("-inf")
    with pytest.raises(NonFiniteTrainingError, match="SFT of clinical-8: the trained weight lm_head.weight is not "
                                                     "finite"):
        check_finite_weights(model, "clinical-8")
