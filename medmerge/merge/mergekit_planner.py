"""mergekit's planner, used through this one module: a merge configuration in, one task per output tensor out.

medmerge executes mergekit's per-tensor tasks itself (its engine streams tensors and shares reads across
candidates), so it needs mergekit's plan without mergekit's executor. mergekit has no public call for that
in the tested range (:data:`TESTED_RANGE`, pinned in ``pyproject.toml``): ``MergePlanner.plan_in_memory()``
fails pydantic validation in 0.1.5, so this module does what ``plan_to_disk()`` does, through three private
parts, confined here:

* ``MergePlanner._plan()``, which fills ``MergePlanner._tensors`` with ``(WeightInfo, Task)`` pairs;
* ``LoaderCache.loaders``, a class-level dict of tensor indexes, cleared before planning (a checkpoint
  rewritten since it was indexed would otherwise be read through its stale index).

:func:`check_private_api` says whether they are there as this module uses them; a mergekit outside the
range that changed them fails with :class:`MergekitAPIError` naming the part and the version, never with an
AttributeError mid-merge (tests/test_mergekit_planner.py runs it against the installed mergekit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from medmerge.errors import MedmergeError, RecipeError

TESTED_RANGE = ">=0.1.5,<0.1.6"   # the mergekit versions this module is tested with (pyproject.toml pins them)


class MergekitAPIError(MedmergeError):
    """The installed mergekit lacks a private part of its planner this module relies on."""


@dataclass(frozen=True)
class TensorInput:
    """One input tensor of a planned output tensor."""

    model: Any                 # mergekit's ModelReference: the key of this input in TensorTask.execute's mapping
    path: str                  # the model's local directory
    names: tuple[str, ...]     # the tensor's name, then its aliases and tied names (the first the checkpoint has)
    optional: bool             # absent from every name: leave the input out
    cast: torch.dtype | None   # the dtype mergekit casts the input to before its task (None: as stored)


@dataclass(frozen=True)
class TensorTask:
    """mergekit's plan of one output tensor: its inputs, its output dtype and the task that computes it."""

    name: str
    out_dtype: torch.dtype | None      # None: the inputs' promoted dtype
    inputs: tuple[TensorInput, ...]
    execute: Callable[[dict[Any, torch.Tensor]], torch.Tensor]   # {TensorInput.model: tensor} -> the output


def check_private_api() -> None:
    """Raise :class:`MergekitAPIError` unless the private parts this module uses are there (see the module)."""
    import mergekit
    from mergekit.io.tasks import LoaderCache
    from mergekit.plan import MergePlanner

    version = getattr(mergekit, "__version__", None) or _installed_version()
    missing = []
    if not callable(getattr(MergePlanner, "_plan", None)):
        missing.append("MergePlanner._plan()")
    if "_tensors" not in getattr(MergePlanner, "__annotations__", {}):
        missing.append("MergePlanner._tensors")
    if not isinstance(getattr(LoaderCache, "loaders", None), dict):
        missing.append("the class-level dict LoaderCache.loaders")
    if missing:
        raise MergekitAPIError(f"mergekit {version} has no {', '.join(missing)}, which medmerge's planner adapter "
                               f"(medmerge/merge/mergekit_planner.py) uses; it is tested with mergekit{TESTED_RANGE}")


def _installed_version() -> str:
    from importlib.metadata import version

    return version("mergekit")


def torch_dtype(name: str | None) -> torch.dtype | None:
    """mergekit's dtype name (``bfloat16``, ``float32`` ...) as a torch dtype; None stays None."""
    from mergekit.common import dtype_from_name

    return dtype_from_name(name)


def plan(config: dict, *, trust_remote_code: bool = False) -> list[TensorTask]:
    """mergekit's plan of ``config`` (a mergekit YAML document as a dict, its models local directories): one
    :class:`TensorTask` per output tensor, in mergekit's order. A recipe mergekit cannot plan is a RecipeError."""
    from mergekit.architecture import get_architecture_info
    from mergekit.config import MergeConfiguration
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner
    from mergekit.tokenizer import PermutedVocabulary

    check_private_api()
    merge_config = MergeConfiguration.model_validate(config)
    options = MergeOptions(trust_remote_code=trust_remote_code, quiet=True)
    cache = LoaderCache()
    cache.loaders.clear()
    cache.setup(options)
    try:
        arch = get_architecture_info(merge_config, options)
        donor = merge_config.base_model or merge_config.referenced_models()[0]
        planner = MergePlanner(merge_config, arch, options=options,
                               out_model_config=donor.config(trust_remote_code=trust_remote_code))
        planner._plan()   # what plan_to_disk() does before writing
        planned = list(planner._tensors)
    except (RuntimeError, ValueError) as exc:
        raise RecipeError(f"mergekit cannot plan this recipe: {exc}") from exc
    out = []
    for weight, task in planned:
        gather = task.gather_tensors
        if isinstance(gather, PermutedVocabulary):
            gather = gather.gather_tensors   # medmerge's parents share one tokenizer (checked): no permutation
        inputs = tuple(
            TensorInput(model=ref, path=str(ref.model.path),
                        names=(wi.name, *(wi.aliases or ()), *(wi.tied_names or ())), optional=bool(wi.optional),
                        cast=torch_dtype(wi.force_dtype or gather.dtype))
            for ref, wi in gather.weight_info.items())
        out.append(TensorTask(name=weight.name, out_dtype=torch_dtype(weight.force_dtype or merge_config.out_dtype),
                              inputs=inputs, execute=_executor(task)))
    return out


def _executor(task: Any) -> Callable[[dict[Any, torch.Tensor]], torch.Tensor]:
    def execute(tensors: dict[Any, torch.Tensor]) -> torch.Tensor:
        return task.execute(tensors=tensors)

    return execute
