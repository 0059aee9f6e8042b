"""A registry of merge methods: name, declared parameters, formula, paper.

Methods mergekit implements take their declared parameters from mergekit's own method
spec, so a recipe is checked against what the method actually accepts; medmerge's
native ``hierarchical_ot`` sits beside them with the same shape. A native method's entry also
carries ``plan_steps``, the function the engine calls to plan it, so adding one is one new
module and one entry here; the engine knows no method by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from medmerge.errors import RecipeError
from medmerge.merge.methods import domain as _domain
from medmerge.merge.methods import hierarchical_ot
from medmerge.merge.methods.domain import BOOLEAN, FINITE, Domain, ParameterError, choice, real, show

if TYPE_CHECKING:   # the engine and the recipe import this registry: only the type checker follows these
    from medmerge.io.checkpoint import Checkpoint
    from medmerge.merge.plan import Step
    from medmerge.merge.recipe import Recipe

MISSING = object()


class PlanSteps(Protocol):
    """How a native method plans itself: one engine Step per output tensor of ``recipe``, each with its reads
    and ``compute(load)``, over the opened and checked ``parents`` (keyed by the recipe's model refs).
    Anything wrong with the recipe or the parents' layout is raised here, before a tensor is read."""

    def __call__(self, recipe: Recipe, parents: Mapping[str, Checkpoint]) -> list[Step]: ...


@dataclass(frozen=True)
class ParamDef:
    """A declared parameter: its name, where it is set, its default and its domain (type and range).

    ``check(value, where)`` checks any form of a value (scalar, gradient, filtered values) and raises
    :class:`ParameterError` (a RecipeError) ``"{where}: 2.0 is outside (0, 1]"``; the CLI, the sweep
    grids, the Optuna ranges and the pipelines all check through it."""

    name: str
    per_model: bool          # set per model (models[].parameters) or once (top-level parameters)
    default: Any = MISSING
    domain: Domain = FINITE
    skips_base: bool = False  # a per-model value mergekit reads for every model but the base (NON_BASE)
    forms: bool = True        # takes gradients and filtered values (mergekit's planner); False: one value

    @property
    def required(self) -> bool:
        return self.default is MISSING

    @property
    def choices(self) -> tuple | None:
        return self.domain.choices or None

    def check(self, value: Any, where: str) -> None:
        """Every scalar of ``value`` (a scalar, a gradient, filtered values) is in the domain, or
        :class:`ParameterError` naming ``where`` (e.g. ``models[1].parameters.density``)."""
        if not self.forms and isinstance(value, (list, tuple, dict)):
            raise ParameterError(f"{where}: {show(value)}: {self.name} takes one value ({self.domain}), "
                                 "not a gradient or filtered values")
        _domain.check_setting(self.domain, value, where)

    def check_range(self, low: Any, high: Any, where: str) -> None:
        """A search range ``[low, high]`` lies inside the domain."""
        self.domain.check_range(low, high, where)


# The domains, from the methods' papers and mergekit's code (mergekit itself checks none of them).
DOMAINS: dict[str, Domain] = {
    "weight": FINITE,                                # any finite real (negative subtracts a task vector)
    "t": real(0, 1),                                 # SLERP's interpolation fraction
    "density": real(0, 1, low_open=True),            # the fraction of a task vector kept (1: all of it)
    # DELLA's MAGPRUNE keeps entries with probabilities in [density - epsilon, density + epsilon], which
    # mergekit requires inside (0, 1) (checked jointly below), so epsilon < 0.5 whatever the density
    "epsilon": real(0, 0.5, high_open=True),
    "gamma": real(0, 1, high_open=True),             # Model Breadcrumbs' share of largest magnitudes dropped
    "lambda": real(0, None, low_open=True),          # task-vector scaling
}


def _della_band(v: Mapping[str, Any]) -> str | None:
    d, e = v.get("density"), v.get("epsilon")
    # mergekit's della_magprune: a density of 1 keeps everything; otherwise it raises mid-merge
    if _domain.is_number(d) and _domain.is_number(e) and d < 1 and (d + e >= 1 or d - e <= 0):
        return (f"density {show(d)} with epsilon {show(e)}: DELLA keeps entries with probabilities "
                "density ± epsilon, which must lie inside (0, 1)")
    return None


def _breadcrumbs_share(v: Mapping[str, Any]) -> str | None:
    d, g = v.get("density"), v.get("gamma")
    if _domain.is_number(d) and _domain.is_number(g) and d < 1 and d + g > 1 + 1e-12:
        return (f"density {show(d)} with gamma {show(g)}: Model Breadcrumbs drops the largest gamma and "
                "keeps density of the rest, so density + gamma must be at most 1")
    return None


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
    formula: str = ""                 # what the method computes, in the notation of FORMULAS
    # a native method plans itself (PlanSteps); None means mergekit's planner does it
    plan_steps: PlanSteps | None = None
    # rules joining a model's parameters: f(values at one point) -> why they are wrong, or None
    rules: tuple[Callable[[Mapping[str, Any]], str | None], ...] = ()

    @property
    def backend(self) -> str:
        """``native`` (plans itself) or ``mergekit`` (planned and computed by mergekit)."""
        return "native" if self.plan_steps is not None else "mergekit"

    def param(self, name: str) -> ParamDef | None:
        return next((p for p in self.params if p.name == name), None)

    def check_values(self, shared: Mapping[str, Any], models: Sequence[tuple[str, Mapping[str, Any], bool]],
                     where: str = "") -> None:
        """Check a merge's parameter values before any tensor is read.

        ``shared`` is the top-level ``parameters``; ``models`` one ``(key path, parameters, is_base)``
        per model, e.g. ``("models[1].parameters", {...}, False)``. Every declared value must be in its
        domain (in every form it takes); then, at every gradient point and filter region, each model's
        values must satisfy the method's joint rules (DELLA's density ± epsilon, Breadcrumbs' density +
        gamma) and normalised weights must not sum to zero. Undeclared keys are not checked here.
        Raises :class:`ParameterError` whose message starts with the key path."""
        pre = f"{where}." if where else ""
        for key, setting in shared.items():
            if (p := self.param(key)) is not None:
                p.check(setting, f"{pre}parameters.{key}")
        for path, params, _ in models:
            for key, setting in params.items():
                if (p := self.param(key)) is not None:
                    p.check(setting, f"{pre}{path}.{key}")
        joint = {p.name for p in self.params if p.per_model} | {"normalize"} if self.rules else {"weight", "normalize"}
        settings = [shared.get(n) for n in joint] + [m.get(n) for _, m, _ in models for n in joint]
        pts = _domain.points(s for s in settings if s is not None)
        n_t, n_r = len({t for _, t in pts}), len({r for r, _ in pts})

        def value(name: str, region, t, scopes):
            for scope in scopes:
                if name in scope and (v := _domain.evaluate(scope[name], region, t)) is not None:
                    return v
            p = self.param(name)
            return None if p is None or p.required else p.default

        def defaulted(scopes) -> str:
            left = [p for p in self.params if p.per_model and not p.required and p.name != "weight"
                    and not any(p.name in scope for scope in scopes)]
            return f"; {' and '.join(f'{p.name} {show(p.default)}' for p in left)} is mergekit's default" \
                if left else ""

        weight = self.param("weight")
        sums: dict = {}
        for region, t in pts:
            here = _domain.at(region, t, n_t, n_r)
            total, complete = 0.0, weight is not None
            for path, params, is_base in models:
                scopes = (params, shared)
                if self.rules and not is_base:
                    values = {p.name: value(p.name, region, t, scopes) for p in self.params}
                    for rule in self.rules:
                        if (why := rule(values)) is not None:
                            raise ParameterError(f"{pre}{path}: {why}{here}{defaulted(scopes)}")
                if weight is not None and not (is_base and weight.skips_base):
                    w = value("weight", region, t, scopes)
                    if _domain.is_number(w):
                        total += w
                    else:
                        complete = False
            if complete and value("normalize", region, t, (shared,)) is True:
                if abs(total) < 1e-8:       # mergekit's own threshold for a zero divisor
                    raise ParameterError(f"{pre}models[*].parameters.weight: the weights sum to {total:g}{here}, "
                                         "and normalize: true divides by their sum")
                prev = sums.get(region)
                if prev is not None and (prev[1] > 0) != (total > 0):
                    raise ParameterError(f"{pre}models[*].parameters.weight: the weights' sum changes sign between "
                                         f"gradient positions {prev[0]:g} and {t:g} (it passes through 0), and "
                                         "normalize: true divides by their sum")
                sums[region] = (t, total)



# What each method mergekit implements computes per tensor (mergekit computes it: the engine reaches its
# per-tensor code through mergekit's planner). Notation: θ_i the inputs, θ_0 the base, δ_i = θ_i − θ_0 the
# task vectors, w_i the weights, λ the task-vector scaling (lambda).
FORMULAS: dict[str, str] = {
    "linear": "Linear (model soup): θ = Σ_i w_i θ_i / Σ_i w_i (without the division when normalize: false)",
    "slerp": "SLERP from a (the base) to b: θ = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b, "
             "cos Ω = <a/‖a‖, b/‖b‖>; (1−t)a + t b when |cos Ω| > 0.9995",
    "task_arithmetic": "Task Arithmetic: θ = θ_0 + λ Σ_i w_i δ_i (divided by Σ_i w_i when normalize: true)",
    "ties": "TIES: trim each δ_i to its top-density magnitudes (δ̂_i), elect the sign s = sign(Σ_i w_i δ̂_i), "
            "keep agreeing entries: θ = θ_0 + λ Σ_i w_i δ̂_i [sign δ̂_i = s] / Σ_i w_i [sign δ̂_i = s]",
    "dare_ties": "DARE TIES: drop each entry of δ_i with probability 1 − density and rescale the rest "
                 "(δ̂_i = m ⊙ δ_i / density, m ~ Bernoulli(density)), then TIES sign election",
    "dare_linear": "Linear DARE: θ = θ_0 + λ Σ_i w_i (m_i ⊙ δ_i / density), m_i ~ Bernoulli(density)",
    "della": "DELLA (MAGPRUNE + TIES): keep entry j of δ_i with probability "
             "p_j = density − ε + 2ε·rank(|δ_ij|)/(n−1) (rank within its row), rescale kept entries by 1/p_j, "
             "then TIES sign election: θ = θ_0 + λ Σ_i w_i δ̂_i / Σ_i w_i",
    "della_linear": "Linear DELLA: MAGPRUNE as in DELLA, no sign election: θ = θ_0 + λ Σ_i w_i δ̂_i",
    "breadcrumbs": "Model Breadcrumbs: in each δ_i drop the largest gamma fraction of magnitudes (outliers) and "
                   "the smallest, keeping a density fraction (δ̂_i): θ = θ_0 + λ Σ_i w_i δ̂_i",
    "breadcrumbs_ties": "Model Breadcrumbs with TIES sign election over the masked δ̂_i",
}
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
        ParamDef(p.name, p.scope != ParameterScope.SHARED, MISSING if p.required else p.default,
                 domain=BOOLEAN if p.value_type is bool else DOMAINS.get(p.name, FINITE),
                 skips_base=p.scope == ParameterScope.NON_BASE)
        for p in spec.parameters
    )
    names = {p.name for p in params}
    rules = tuple(rule for rule, needs in ((_della_band, {"density", "epsilon"}),
                                          (_breadcrumbs_share, {"density", "gamma"})) if needs <= names)
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
        formula=FORMULAS[name],
        rules=rules,
    )


HIERARCHICAL_OT = MethodDef(
    name="hierarchical_ot",
    pretty_name="Hierarchical Cosine-OT-LERP",
    reference_url=None,
    params=(ParamDef("align", per_model=False, default="per_projection",
                     domain=choice("per_projection", "per_layer"), forms=False),),
    needs_base=True,
    min_models=2,
    max_models=2,
    formula="Hierarchical Cosine-OT-LERP: per tensor w = max(0, cos(Δ_A, Δ_B)) (Δ = model − base); B's "
            "attention heads aligned to A's (linear_sum_assignment on 1 − cos); θ = (1 − w)·A + w·B_aligned",
    plan_steps=hierarchical_ot.plan_steps,
)

METHODS: dict[str, MethodDef] = {name: _from_mergekit(name) for name in FORMULAS}
METHODS[HIERARCHICAL_OT.name] = HIERARCHICAL_OT


__all__ = ["METHODS", "MethodDef", "ParamDef", "Domain", "ParameterError", "get_method", "DOMAINS", "FORMULAS"]


def get_method(name: str) -> MethodDef:
    try:
        return METHODS[name]
    except KeyError:
        raise RecipeError(
            f"unknown merge method {name!r}; known methods: {', '.join(sorted(METHODS))}"
        ) from None
