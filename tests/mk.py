"""Run mergekit itself (in process, as mergekit-yaml does) for side-by-side comparisons."""

from __future__ import annotations

from pathlib import Path

import yaml


def mergekit_merge(config: str | dict, out: Path, random_seed: int | None = None) -> Path:
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    data = yaml.safe_load(config) if isinstance(config, str) else config
    LoaderCache().loaders.clear()
    run_merge(MergeConfiguration.model_validate(data), str(out),
              MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False, random_seed=random_seed))
    return Path(out)


def ratio_recipe(name: str, clinical: str, instruct: str, **extra) -> dict:
    """The mergekit recipe a ``<method>-<ratio>`` candidate stands for, written from the README's meaning (linear
    at r weights clinical and instruct by (1 - r, r); slerp at t takes clinical as base_model), never from the
    candidate's own mergekit_config.yml: a wrong ratio written into both would pass that comparison."""
    method, r = name.rsplit("-", 1)
    r = float(r)
    if method == "linear":
        return {"merge_method": "linear", "models": [{"model": clinical, "parameters": {"weight": 1 - r}},
                                                     {"model": instruct, "parameters": {"weight": r}}], **extra}
    assert method == "slerp", name
    return {"merge_method": "slerp", "base_model": clinical, "models": [{"model": clinical}, {"model": instruct}],
            "parameters": {"t": r}, **extra}
