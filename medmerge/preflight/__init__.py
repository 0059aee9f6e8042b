"""Preflight: a pipeline's whole run configuration checked before any step runs (before ZenML is imported).

``python -m pipelines.merge_search|finetune|retrain`` and ``medmerge schedule`` call :func:`check_run_configs`
first. It reads each run-config YAML and collects every problem that can be known from the configuration
and the file system, each as one line ``<file>: parameters.config.<key>: <what is wrong>``; when there is
any, it raises :class:`PreflightError` (the entry points print one line per problem and exit 2) and nothing
has been run or written. What it checks:

* **keys**: an unknown key (at the top level, under ``parameters``, or anywhere in ``parameters.config``)
  names the key, the file and the nearest valid key; pydantic's errors become one line each, never a dump;
* **types**: a boolean or a string where a number belongs, and ``.nan``/``.inf``, are refused wherever they
  appear (pydantic's lax mode would read ``true`` as 1 and ``"8"`` as 8);
* **domains**: the ranges the configuration models declare (:class:`~medmerge.selection.search.SearchConfig`,
  :class:`~medmerge.finetune.FinetuneConfig` and the settings they hold: evaluation ``limit`` >= 1,
  batch sizes >= 1, ``eps`` >= 0, learning rate > 0 ...), the sweep's (the method registry's, through
  :class:`~medmerge.merge.recipe.SweepSpec`), and the registered model and experiment names;
* **names**: suites, objectives, tasks, methods, presets, and the candidate names ``picks:`` and ``promote:``
  list, which must be candidates of the grid (an Optuna search names its candidates while it runs, so it
  takes keywords only);
* **files**: parents and initialisations exist as checkpoints (a name that is no local path must look like
  a Hub id ``org/name``), data directories and task files exist, and the shot sizes fit the training split;
* **outputs**: ``output_dir`` may be written (:func:`medmerge.io.atomic.check_output_dir`): not the current
  directory or an ancestor, not a file or below one, not holding or inside a parent, writable; an existing
  one holds only what medmerge wrote there;
* **URLs**: ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) has a scheme MLflow takes, and ``study_storage``
  is a SQLAlchemy URL of a known dialect.

Paths are checked on this machine; a run config whose steps run in containers (``settings: docker:``)
gets every check but those of the file system, which the step pods would see differently.
"""

from __future__ import annotations

from medmerge.preflight.problems import (
    ZENML_RUN_KEYS,
    PreflightError,
    Problems,
    RunConfigError,
    one_line,
    read_run_config,
)
from medmerge.preflight.runconfig import check_finetune, check_run_configs, check_search
from medmerge.preflight.schema import pydantic_problems

# what the entry points, the pipeline launcher and the tests use; the one-value checks are in .values
__all__ = ["PreflightError", "Problems", "RunConfigError", "ZENML_RUN_KEYS", "check_finetune", "check_run_configs",
           "check_search", "one_line", "pydantic_problems", "read_run_config"]
