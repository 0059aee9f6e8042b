"""lm-eval task YAMLs for the clinical, ifeval and medical5 suites (tasks are data).

Each YAML names the public Hub dataset (a user with network access gets the usual lm-eval
behaviour) and, under ``metadata.local``, the files of a local data directory with the same
records in medmerge's normalised shape (question, choices, answer[, context]); the Hub
layouts are mapped to that shape by the ``process_docs`` functions in ``utils.py``.
"""
