"""Benchmark suites and scoring with lm-evaluation-harness, offline-capable.

``tasks`` loads the task YAMLs and suites (Hub or a local data directory), ``runner``
evaluates a model object or checkpoint, ``scores`` computes Medical Avg and the IF score
(the only place they are computed), ``cache`` keys results by candidate identity and task
config, and ``sweep_eval`` evaluates a sweep's candidates in memory.
"""
