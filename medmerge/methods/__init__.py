"""A registry of merge methods: name, declared parameters, formula, paper.

Methods mergekit implements take their declared parameters from mergekit's own method
spec, so a recipe is checked against what the method actually accepts; medmerge's
native ``hierarchical_ot`` sits beside them with the same shape. A native method's entry also
carries ``plan_steps``, the function the engine calls to plan it, so adding one is one new
module and one entry here; the engine knows no method by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from medmerge.errors import RecipeError
from medmerge.methods import hierarchical_ot, mergekit_methods

MISSING = object()


@dataclass(frozen=True)
class ParamDef:
    name: str
    per_model: bool          # set per model (models[].parameters) or once (top-level parameters)
    default: Any = MISSING
    choices: tuple | None = None

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass(frozen=True)
class MethodDef:
    name: str
    pretty_name: str
    reference_url: str | None
    params: tuple[ParamDef, ...]
    needs_base: bool
    min_models: int = 1               # non-base models
    max_models: int | None = None
    stochastic: bool = False          # draws random masks: seeded per tensor
    # output row r depends only on input row r (enables chunked I/O); every row-separable method is
    # also elementwise, so its bits do not depend on torch's thread count (a sweep writing to disk
    # then leaves cores to the writers: engine.compute_threads)
    row_separable: bool = False
    float32_math: bool = False        # computes in float32 from any half-precision input (exact upcast)
    function: Any = None              # the pure tensor function documenting the formula
    # a native method plans itself: plan_steps(recipe, parents) -> list[engine.Step], one per output
    # tensor, each with its reads and compute(load); None means mergekit's planner does it
    plan_steps: Callable[..., list] | None = None

    @property
    def backend(self) -> str:
        """``native`` (plans itself) or ``mergekit`` (planned and computed by mergekit)."""
        return "native" if self.plan_steps is not None else "mergekit"

    def param(self, name: str) -> ParamDef | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def formula(self) -> str:
        return (self.function.__doc__ or "").strip() if self.function else ""


SEED_METHODS = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear", "della",
                "della_linear", "breadcrumbs", "breadcrumbs_ties")
_STOCHASTIC = {"dare_ties", "dare_linear", "della", "della_linear"}
_ROW_SEPARABLE = {"linear", "task_arithmetic"}
# mergekit's linear accumulates in float32 whatever the input precision, and upcasting bf16/fp16
# is exact, so feeding it float32 gives the same bits; a sweep then upcasts each parent tensor
# once for all its candidates instead of once per candidate inside the kernel.
_FLOAT32_MATH = {"linear"}


def _from_mergekit(name: str) -> MethodDef:
    from mergekit import merge_methods
    from mergekit.merge_methods.base import BasePolicy, ParameterScope

    spec = merge_methods.get(name).spec
    params = tuple(
        ParamDef(p.name, p.scope != ParameterScope.SHARED, MISSING if p.required else p.default)
        for p in spec.parameters
    )
    needs_base = spec.contract.base == BasePolicy.REQUIRED
    max_inputs = spec.contract.max_inputs
    return MethodDef(
        name=name,
        pretty_name=spec.pretty_name or name,
        reference_url=spec.reference_url,
        params=params,
        needs_base=needs_base,
        min_models=1,
        max_models=(max_inputs - 1 if needs_base else max_inputs) if max_inputs else None,
        stochastic=name in _STOCHASTIC,
        row_separable=name in _ROW_SEPARABLE,
        float32_math=name in _FLOAT32_MATH,
        function=getattr(mergekit_methods, name),
    )


HIERARCHICAL_OT = MethodDef(
    name="hierarchical_ot",
    pretty_name="Hierarchical Cosine-OT-LERP",
    reference_url=None,
    params=(ParamDef("align", per_model=False, default="per_projection", choices=("per_projection", "per_layer")),),
    needs_base=True,
    min_models=2,
    max_models=2,
    function=hierarchical_ot,
    plan_steps=hierarchical_ot.plan_steps,
)

METHODS: dict[str, MethodDef] = {name: _from_mergekit(name) for name in SEED_METHODS}
METHODS[HIERARCHICAL_OT.name] = HIERARCHICAL_OT


def get_method(name: str) -> MethodDef:
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(
            f"unknown merge method {name!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None
