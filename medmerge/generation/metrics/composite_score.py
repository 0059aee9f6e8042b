"""The composite: the unweighted mean of BLEU, METEOR, ROUGE-1/2/L and BERTScore F1, and the local
``evaluate`` module (``clinical_composite``) that computes it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

from medmerge.generation.metrics.embedding import bertscore
from medmerge.generation.metrics.inputs import check_inputs
from medmerge.generation.metrics.lexical import bleu, meteor, rouge

#: The six metrics whose unweighted mean is the composite, in report order.
COMPOSITE_METRICS = ("bleu", "meteor", "rouge1", "rouge2", "rougeL", "bertscore_f1")


def composite(predictions: Sequence[str], references: Sequence[str], **bertscore_kwargs) -> dict:
    """Every metric on a 0–1 scale and their unweighted mean.

    Returns ``bleu``, ``meteor``, ``rouge1``, ``rouge2``, ``rougeL``, ``bertscore_f1`` (see
    :data:`COMPOSITE_METRICS`), ``composite`` = the mean of exactly those six, and
    ``bertscore_model`` / ``bertscore_layer`` (which encoder and layer the F1 came from).
    ``bertscore_kwargs`` go to :func:`bertscore` (``model_path``, ``num_layers``, ``device``,
    ``batch_size``). ``ValueError`` unless the inputs are two equally long, non-empty lists of
    strings.
    """
    predictions, references = check_inputs(predictions, references)
    bs = bertscore(predictions, references, **bertscore_kwargs)
    scores = {
        "bleu": bleu(predictions, references),
        "meteor": meteor(predictions, references),
        **rouge(predictions, references),
        "bertscore_f1": bs["f1"],
    }
    out = {k: float(scores[k]) for k in COMPOSITE_METRICS}
    out["composite"] = fmean(out[k] for k in COMPOSITE_METRICS)
    out["bertscore_model"] = bs["model"]
    out["bertscore_layer"] = bs["num_layers"]
    return out


def composite_metric_dir() -> Path:
    """The directory of the local ``evaluate`` module (``clinical_composite/clinical_composite.py``)."""
    return Path(__file__).resolve().parents[1] / "clinical_composite"


def load_composite_metric(**load_kwargs):
    """``evaluate.load`` of the local ``clinical_composite`` module: no Hub involved.

    ``evaluate`` treats a directory holding ``<dirname>.py`` as a local module script and
    imports it from there; ``keep_in_memory=True`` by default, so computing writes no Arrow
    cache files. ``metric.compute(predictions=..., references=...)`` returns :func:`composite`'s
    dict; BERTScore options go to ``compute`` too (``model_path=..., num_layers=...``).
    """
    import evaluate

    load_kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(composite_metric_dir()), **load_kwargs)
