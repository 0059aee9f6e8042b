"""Lexical overlap metrics on a 0-1 scale: sacreBLEU corpus BLEU, ROUGE-1/2/L F-measures and NLTK's
METEOR (WordNet read offline, :mod:`medmerge.generation.metrics.wordnet_data`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from medmerge.generation.metrics.inputs import check_inputs
from medmerge.generation.metrics.wordnet_data import wordnet


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU from sacreBLEU on a 0–1 scale (sacreBLEU's 0–100 ``score`` / 100).

    Settings are sacreBLEU's defaults, stated here because they change the number: tokenizer
    ``13a`` (mteval-v13a: splits punctuation, keeps case), ``lowercase=False``, smoothing
    ``exp`` (a zero n-gram precision ``p_n`` is replaced by ``1 / (2**k * total_n)``, ``k``
    counting the zero precisions so far), max n-gram order 4, uniform weights, brevity
    penalty ``exp(1 - r/c)`` when the hypothesis corpus is shorter than the reference corpus.
    One reference per prediction. Float noise (``100.00000000000004 / 100``) is clipped to
    [0, 1].
    """
    from sacrebleu.metrics import BLEU

    predictions, references = check_inputs(predictions, references)
    score = BLEU(tokenize="13a", smooth_method="exp", lowercase=False).corpus_score(
        predictions, [references]
    )
    return min(1.0, max(0.0, score.score / 100.0))


# --------------------------------------------------------------------------------------------
# ROUGE
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``{"rouge1", "rouge2", "rougeL"}``: F-measures averaged over the pairs.

    ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``:
    text is lowercased, every non-``[a-z0-9]`` character becomes a space, tokens longer than 3
    characters are Porter-stemmed. ``rougeL`` is the sentence-level LCS (not ``rougeLsum``).
    """
    predictions, references = check_inputs(predictions, references)
    scorer = _rouge_scorer()
    keys = ("rouge1", "rouge2", "rougeL")
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for k in keys:
            totals[k] += scores[k].fmeasure
    return {k: totals[k] / len(predictions) for k in keys}


def meteor_tokenize(text: str) -> list[str]:
    """METEOR's tokens: :func:`nltk.tokenize.wordpunct_tokenize` (regex ``\\w+|[^\\w\\s]+``).

    No Punkt model needed; punctuation runs are tokens of their own (``"fever."`` ->
    ``["fever", "."]``), as with ``word_tokenize``. NLTK's METEOR lowercases the tokens itself.
    """
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text)


def meteor(predictions: Sequence[str], references: Sequence[str]) -> float:
    """NLTK's METEOR, averaged over the pairs.

    ``nltk.translate.meteor_score.meteor_score([ref_tokens], pred_tokens, wordnet=...)`` with
    its defaults (``alpha=0.9, beta=3, gamma=0.5``, lowercasing, Porter stemmer): unigram
    matches in three stages (exact, stem, WordNet synonym), ``Fmean = P*R / (alpha*P +
    (1-alpha)*R)`` and a fragmentation penalty ``gamma * (chunks/matches)**beta``; score
    ``Fmean * (1 - penalty)``. So identical texts of ``m`` tokens score ``1 - 0.5 / m**3``,
    not 1 (0.996 for 5 tokens). Tokens from :func:`meteor_tokenize`; WordNet from
    :func:`wordnet` (offline).
    """
    from nltk.translate.meteor_score import meteor_score

    predictions, references = check_inputs(predictions, references)
    wn = wordnet()
    total = 0.0
    for pred, ref in zip(predictions, references):
        total += meteor_score([meteor_tokenize(ref)], meteor_tokenize(pred), wordnet=wn)
    return total / len(predictions)

