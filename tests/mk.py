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
