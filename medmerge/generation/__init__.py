"""Clinical text generation: datasets (:mod:`.data`), few-shot subsets (:mod:`.subsets`),
dataset validation (:mod:`.validation`) and offline reference-based metrics with their
unweighted composite (:mod:`.metrics`: BLEU, ROUGE, METEOR, BERTScore)."""
