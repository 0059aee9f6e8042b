"""ZenML pipelines: compositions of the steps in ``steps/`` (no logic of their own).

Planned here (see the issues): ``merge_search`` (compatibility -> in-memory sweep and
evaluation -> Pareto frontier -> write and register the picks), ``finetune`` and ``retrain``.
"""
