"""The recipe: one typed merge configuration for the CLI, the pipeline steps and registry tags.

A recipe is the YAML ``mergekit-yaml`` reads (``merge_method``, ``base_model``,
``models[].parameters``, ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source``),
parsed once at the edge into frozen pydantic models and checked against the method
registry. Unlike mergekit, a parameter the method does not declare is an error naming it
(mergekit silently ignores a misspelled one). ``Recipe.to_yaml()`` exports YAML that
``mergekit-yaml`` reproduces bit for bit.

medmerge adds one optional key, ``random_seed`` (for dare_*/della*); it is written to the
exported YAML as a comment, since mergekit takes the seed on its command line.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medmerge.errors import RecipeError
from medmerge.io.yaml_file import Int, Real
from medmerge.merge.methods import MethodDef, get_method
from medmerge.merge.methods.domain import UNIT, Domain, ParameterError, show

Scalar = Union[bool, int, float, str]
# a scalar, a gradient (list of scalars interpolated across layers), or filtered values
# ([{filter: ..., value: ...}]): its form and its domain are checked against the method registry
# (ParamDef.check), which names the key path; a pydantic union would dump one error per member.
# Copied on the way in, so a caller's lists are not shared with the frozen recipe.
ParameterValue = Annotated[Any, BeforeValidator(copy.deepcopy)]
DTYPES = ("float32", "float16", "bfloat16", "float64")
MERGEKIT_ONLY_KEYS = ("slices", "modules", "tokenizer", "chat_template")


def _check_dtype(v: str | None) -> str | None:
    if v is not None and v not in DTYPES:
        raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(DTYPES)}")
    return v


DType = Annotated[str | None, AfterValidator(_check_dtype)]


class ModelEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)


class Recipe(BaseModel):
    """A merge: method, parents, parameters, dtypes. Frozen; validated against the method registry."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    merge_method: str
    base_model: str | None = None
    models: tuple[ModelEntry, ...]
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)
    dtype: DType = None
    out_dtype: DType = None
    tokenizer_source: str | None = None
    random_seed: Int | None = None

    @model_validator(mode="after")
    def _check_against_method(self):
        method = get_method(self.merge_method)
        if not self.models:
            raise ValueError("models: at least one model is required")
        if method.needs_base and not self.base_model:
            raise ValueError(f"{method.name} needs base_model")
        non_base = [m for m in self.models if m.model != self.base_model]
        if len(non_base) < method.min_models:
            raise ValueError(f"{method.name} needs at least {method.min_models} model(s) besides the base")
        if method.max_models is not None and len(non_base) > method.max_models:
            raise ValueError(
                f"{method.name} takes {'exactly' if method.min_models == method.max_models else 'at most'} "
                f"{method.max_models} model(s) besides the base; got {len(non_base)}"
            )
        declared = ", ".join(p.name for p in method.params) or "none"
        for key, _value in self.parameters.items():
            p = method.param(key)
            if p is None:
                raise ValueError(f"parameter {key!r} is not declared by {method.name} (it takes: {declared})")
        for i, entry in enumerate(self.models):
            for key in entry.parameters:
                p = method.param(key)
                if p is None:
                    raise ValueError(
                        f"models[{i}] ({entry.model}): parameter {key!r} is not declared by {method.name} "
                        f"(it takes: {declared})"
                    )
                if not p.per_model:
                    raise ValueError(
                        f"models[{i}] ({entry.model}): parameter {key!r} of {method.name} is set once for the "
                        "merge; put it under the top-level parameters"
                    )
        for p in method.params:
            if not p.required:
                continue
            targets = non_base if p.per_model else []
            if not p.per_model and p.name not in self.parameters:
                raise ValueError(f"{method.name} needs parameter {p.name!r}")
            for entry in targets:
                if p.name not in entry.parameters and p.name not in self.parameters:
                    raise ValueError(f"{method.name} needs parameter {p.name!r} for model {entry.model}")
        # every value in its domain, and the method's joint rules, at every gradient point and filter
        method.check_values(self.parameters, [(f"models[{i}].parameters", m.parameters, m.model == self.base_model)
                                              for i, m in enumerate(self.models)])
        if self.tokenizer_source not in (None, "base") and self.tokenizer_source not in self.parent_refs:
            raise ValueError(
                f"tokenizer_source {self.tokenizer_source!r} must be 'base' or one of the models "
                "(medmerge merges parents that share one tokenizer; 'union' is not supported)"
            )
        return self

    # -- views -------------------------------------------------------------------------------
    @property
    def method(self) -> MethodDef:
        return get_method(self.merge_method)

    @property
    def parent_refs(self) -> list[str]:
        """Every referenced model, base first, no duplicates."""
        refs = [self.base_model] if self.base_model else []
        for m in self.models:
            if m.model not in refs:
                refs.append(m.model)
        return refs

    @property
    def donor(self) -> str:
        """The parent whose config (and default tokenizer) the output takes, as mergekit does."""
        return self.base_model or self.models[0].model

    def with_resolved_paths(self, resolve) -> Recipe:
        """A copy whose model references are mapped through ``resolve(ref) -> str``."""
        data = self.model_dump()
        if data["base_model"]:
            data["base_model"] = resolve(data["base_model"])
        for m in data["models"]:
            m["model"] = resolve(m["model"])
        if data["tokenizer_source"] not in (None, "base"):
            data["tokenizer_source"] = resolve(data["tokenizer_source"])
        return Recipe.model_validate(data)

    def to_mergekit_dict(self) -> dict:
        d: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            d["base_model"] = self.base_model
        d["models"] = [
            {"model": m.model, **({"parameters": dict(m.parameters)} if m.parameters else {})} for m in self.models
        ]
        if self.parameters:
            d["parameters"] = dict(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d

    def to_yaml(self) -> str:
        """mergekit YAML that reproduces this recipe (``mergekit-yaml`` reads it as is)."""
        body = yaml.safe_dump(self.to_mergekit_dict(), sort_keys=False)
        if self.random_seed is not None:
            body = f"# medmerge random_seed: {self.random_seed} (mergekit-yaml --random-seed)\n" + body
        return body

    def tags(self) -> dict[str, str]:
        """Flat string tags for a model registry."""
        tags = {"merge_method": self.merge_method, "parents": ",".join(self.parent_refs)}
        if self.base_model:
            tags["base_model"] = self.base_model
        for i, m in enumerate(self.models):
            for k, v in m.parameters.items():
                tags[f"models.{i}.{k}"] = str(v)
        for k, v in self.parameters.items():
            tags[f"parameters.{k}"] = str(v)
        if self.dtype:
            tags["dtype"] = self.dtype
        if self.random_seed is not None:
            tags["random_seed"] = str(self.random_seed)
        return tags


def key_path(loc) -> str:
    """pydantic's ``("models", 1, "parameters", "density")`` as ``models[1].parameters.density``."""
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


def _errors_text(exc: ValidationError, source: str | None = None) -> str:
    parts = []
    for err in exc.errors():
        loc = key_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("float_type", "int_type", "bool_type", "string_type", "float_parsing", "int_parsing",
                           "int_from_float", "finite_number") and "input" in err:
            msg = f"{show(err['input'])}: {msg[:1].lower()}{msg[1:]}"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc!r}"
            if loc in MERGEKIT_ONLY_KEYS:
                msg += " (slices/modules/tokenizer/chat_template recipes are not supported by medmerge; use mergekit)"
            loc = ""
        if loc and msg.startswith((f"{loc}.", f"{loc}[", f"{loc}:")):
            loc = ""                                  # the message names its key path itself
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts) if source is None else f"{source}: " + "; ".join(parts)


def load_yaml(path: str | os.PathLike) -> dict:
    from medmerge.io.yaml_file import read_yaml

    p = Path(path)
    data = read_yaml(p, RecipeError)
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validated(model: type[BaseModel], data: dict, source: str):
    """``model`` validated from ``data``; pydantic's errors become one RecipeError naming ``source``."""
    try:
        return model.model_validate(data)
    except RecipeError as exc:
        text = str(exc)
        raise RecipeError(text if text.startswith(f"{source}: ") else f"{source}: {text}") from None
    except ValidationError as exc:
        raise RecipeError(_errors_text(exc, source)) from None


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    return _validated(Recipe, data, source)


def load_recipe(path: str | os.PathLike) -> Recipe:
    return parse_recipe(load_yaml(path), str(path))


def ratio_label(r: float) -> str:
    """0.0 -> '0.0', 0.25 -> '0.25', 1 -> '1.0'."""
    s = f"{r:.4f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


DEFAULT_RATIOS = tuple(round(i / 10, 1) for i in range(11))
SWEEP_METHODS = ("linear", "slerp")
SEARCHES = ("grid", "optuna")
RATIO = "ratio"      # a sweep-level parameter: instruct's share (weights (1 - r, r), or slerp's t)
PRESETS_DIR = Path(__file__).parents[1] / "resources" / "presets"


class Range(BaseModel):
    """A continuous range ``[low, high]`` for ``search: optuna``; ``gradient: n`` proposes n values
    interpolated across layers (mergekit's gradient form, e.g. ``t: [x0, x1, x2]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    low: Real
    high: Real
    gradient: Int | None = None
    log: bool = False

    @model_validator(mode="after")
    def _check(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"range [{self.low}, {self.high}] must have finite ends")
        if self.low > self.high:
            raise ValueError(f"range low {self.low:g} > high {self.high:g}")
        if self.gradient is not None and self.gradient < 2:
            raise ValueError(f"range gradient {self.gradient}: a gradient needs at least 2 points")
        if self.log and self.low <= 0:
            raise ValueError(f"range low {self.low:g}: a log range needs low > 0")
        return self


# one entry of a method's grid: a value (a scalar or a gradient list), a list of values, or a range
GridValue = Union[Scalar, list[Scalar]]


class SweepCandidate(BaseModel):
    """One merge a sweep evaluates: its recipe, the method and the grid values that made it.

    ``role`` is "clinical" or "instruct" for a candidate that reproduces that parent (a ratio of
    0 or 1, or the parents a methods grid adds for comparison), else None."""

    model_config = ConfigDict(frozen=True)
    name: str
    method: str
    ratio: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    recipe: Recipe
    role: str | None = None


def _label(v, digits: int = 6) -> str:
    if isinstance(v, (list, tuple)):
        return "-".join(_label(x, digits) for x in v)
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _check_grid_value(param, value, where: str) -> None:
    """One value of a grid: a value, or a gradient (a list of values); filtered values are not swept.
    ``param`` is the ParamDef (or, for ``ratio``, the domain [0, 1])."""
    if isinstance(value, list) and any(isinstance(x, (list, dict)) for x in value) or isinstance(value, dict):
        raise ParameterError(f"{where}: a grid value is a value or a gradient [v0, v1, ...], not {show(value)}")
    if isinstance(param, Domain):
        from medmerge.merge.methods.domain import check_setting

        check_setting(param, value, where)
    else:
        param.check(value, where)


def complement(r: float) -> float:
    """1 − r as the decimal it is (1 − 0.7 is 0.30000000000000004 in binary; the recipe says 0.3)."""
    return round(1.0 - r, 12)


def candidate_name(method: str, params: dict[str, Any]) -> str:
    """``linear-0.5`` for a ratio alone (as the ratio grid names them), else ``dare_ties-density=0.6``."""
    if list(params) == [RATIO] and not isinstance(params[RATIO], (list, tuple)):
        return f"{method}-{ratio_label(params[RATIO])}"
    return "-".join([method, *(f"{k}={_label(v)}" for k, v in params.items())]) if params else method


def load_preset(name: str) -> dict:
    """A preset shipped in the package (``medmerge/resources/presets/<name>.yaml``)."""
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise RecipeError(f"unknown preset {name!r}; known presets: {known}")
    return load_yaml(path)


def _known_methods(names) -> None:
    if not names:
        raise ValueError("methods: at least one method is required")
    for m in names:
        get_method(m)   # an unknown name is named with the known ones


class _RatioForm(BaseModel):
    """The input sugar ``methods: [linear, slerp]`` with ``ratios: [...]``, checked before it becomes the methods
    mapping ``{linear: {ratio: [...]}, slerp: {ratio: [...]}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    methods: tuple[str, ...]
    ratios: tuple[Real, ...] = DEFAULT_RATIOS

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        _known_methods(v)
        for m in v:
            if m not in SWEEP_METHODS:
                raise ValueError(f"method {m!r} cannot be swept over a ratio; use one of "
                                 f"{', '.join(SWEEP_METHODS)} (or the methods mapping: {{{m}: {{...}}}})")
        if len(set(v)) != len(v):
            raise ValueError("methods: duplicates")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        outside = [r for r in v if math.isnan(r) or not 0.0 <= r <= 1.0]
        if outside or not v:
            raise ValueError(f"ratio {outside[0]} is outside [0, 1]" if outside
                             else "ratios: at least one ratio is required")
        if len({ratio_label(r) for r in v}) != len(v):
            raise ValueError("ratios: duplicates")
        return v


class SweepSpec(BaseModel):
    """The candidates of a sweep between a clinical model and an instruct model.

    ``methods`` maps each method to a grid of its declared parameters, e.g.
    ``{dare_ties: {density: [0.6, 0.8]}, hierarchical_ot: {}}`` (or a shipped ``preset:`` fills it).
    The ratio form ``methods: [linear, slerp]`` with ``ratios: [...]`` is input sugar, turned into that
    mapping when the spec is parsed: it sweeps a ratio r, linear weighting (clinical, instruct) by
    (1 − r, r), slerp at t = r taking clinical as base_model; it marks the spec ``ratio_sweep``, whose
    candidates are named by their ratio (``linear-0.5``) and whose parents are its ratios 0 and 1 (when
    listed) rather than two candidates added beside the grid. In the mapping:

    * a per-model parameter (weight, density, ...) is set on both models, a shared one
      (t, lambda, ...) once; ``ratio`` sets the weights (1 − r, r), or t for slerp;
    * a list is the grid's values (a gradient is a nested list, ``t: [[0, 0.5, 1]]``), a scalar
      one value; a ``{low, high}`` range is for ``search: optuna``, which proposes values
      within ``budget`` evaluations instead of enumerating a grid;
    * a method that interpolates from one model to one other (slerp) goes from clinical to
      instruct; a method that needs a base takes ``base``; a missing weight is 1.0.

    Every candidate of a grid is built (and checked against the method registry) when the spec
    is parsed, so a bad grid fails before any model is read.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    INPUT_SUGAR: ClassVar[tuple[str, ...]] = ("ratios",)   # keys read at parse, not fields
    clinical: str
    instruct: str
    base: str | None = None
    preset: str | None = None
    # {method: {param: a value | [values] | {low, high} range}} (checked in _methods_form)
    methods: dict[str, dict[str, Any]]   # no methods: the ratio form's default, linear and slerp
    ratio_sweep: bool = False            # set at parse: True for the ratio form
    search: str = "grid"
    budget: Int | None = None
    # search: optuna, trials asked B at a time from the trials told before them, evaluated side by side and
    # told together: the same search whatever the number of workers (None: each worker asks when it is free)
    batch: Int | None = None
    seed: Int = 0
    dtype: DType = None
    out_dtype: DType = None

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data):
        """A preset fills what the spec does not give (a dumped spec carries both: its methods win); the ratio
        form becomes the methods mapping, here and nowhere else."""
        if not isinstance(data, dict):
            return data
        if data.get("preset") is not None:
            preset = load_preset(str(data["preset"]))
            data = {**{k: v for k, v in preset.items() if k not in ("description",)}, **data}
        methods, ratios = data.get("methods"), data.get("ratios")
        if isinstance(methods, dict):
            if ratios is not None:
                raise ValueError("ratios: belongs to the list form of methods; in the methods mapping put "
                                 "ratio: [...] under each method")
            return {k: v for k, v in data.items() if k != "ratios"}
        methods = list(SWEEP_METHODS) if methods is None else methods
        if isinstance(methods, (list, tuple)):
            for i, m in enumerate(methods):
                if not isinstance(m, str):
                    raise ValueError(f"methods[{i}]: {show(m)} is not a method name")
        else:
            raise ValueError(f"methods: {show(methods)} is neither a list of methods nor a mapping of methods to grids")
        try:
            form = _RatioForm.model_validate({"methods": methods, **({"ratios": ratios} if ratios is not None else {})})
        except ValidationError as exc:
            raise ValueError(_errors_text(exc)) from None
        return {**{k: v for k, v in data.items() if k != "ratios"}, "ratio_sweep": True,
                "methods": {m: {RATIO: list(form.ratios)} for m in form.methods}}

    @field_validator("methods", mode="before")
    @classmethod
    def _methods_form(cls, v):
        """Each entry of a grid a value, a list of values or a ``{low, high}`` Range."""
        if not isinstance(v, dict):
            raise ValueError(f"methods: {show(v)} is neither a list of methods nor a mapping of methods to grids")
        out = {}
        for m, grid in v.items():
            if grid is not None and not isinstance(grid, dict):
                raise ValueError(f"methods.{m}: {show(grid)} is not a grid (a mapping of parameters to values)")
            entries = {}
            for key, value in (grid or {}).items():
                if isinstance(value, dict) and not isinstance(value, Range):
                    try:
                        value = Range.model_validate(value)
                    except ValidationError as exc:
                        raise ValueError(_errors_text(exc, f"methods.{m}.{key}")) from None
                entries[key] = value
            out[m] = entries
        return out

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        _known_methods(v)
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.search not in SEARCHES:
            raise ValueError(f"search {self.search!r}: use one of {', '.join(SEARCHES)}")
        if self.ratio_sweep and any(set(grid) != {RATIO} for grid in self.methods.values()):
            raise ValueError("ratio_sweep: every method's grid must be its ratios alone (methods: {m: {ratio: "
                             "[...]}}); it is set by the ratio form")
        if self.search == "optuna":
            if self.budget is None:
                raise ValueError("search: optuna needs budget: N (the number of evaluations)")
            if self.budget < 1:
                raise ValueError(f"budget {self.budget}: it must be at least 1")
            if self.batch is not None and self.batch < 1:
                raise ValueError(f"batch {self.batch}: it must be at least 1")
        elif self.budget is not None:
            raise ValueError("budget: applies to search: optuna (a grid evaluates all its candidates)")
        elif self.batch is not None:
            raise ValueError("batch: applies to search: optuna (a grid evaluates all its candidates)")
        for method, grid in self.grids().items():
            m = get_method(method)
            given = {} if self.ratio_sweep else self.methods[method]
            for key, values in grid.items():
                where = f"methods.{method}.{key}"
                if key == RATIO:
                    if not (m.param("weight") or (m.param("t") and m.max_models == 1)):
                        raise ValueError(f"{where}: {method} takes no ratio (it has no weight or t)")
                    domain, param = UNIT, UNIT
                elif m.param(key) is None:
                    declared = ", ".join(p.name for p in m.params) or "none"
                    raise ValueError(f"{where}: parameter {key!r} is not declared by {method} (it takes: {declared})")
                else:
                    param = m.param(key)
                    domain = param.domain
                if isinstance(values, Range):
                    if self.search != "optuna":
                        raise ValueError(f"{where}: a range needs search: optuna (a grid lists values)")
                    domain.check_range(values.low, values.high, where)
                    continue
                if not values:
                    raise ValueError(f"{where}: empty grid (give at least one value)")
                listed = isinstance(given.get(key), list) or not given
                for i, value in enumerate(values):
                    _check_grid_value(param, value, f"{where}[{i}]" if listed else where)
            if m.max_models != 1 and m.needs_base and not self.base:
                raise ValueError(f"methods.{method}: {method} needs a base model; set base: (the parents' "
                                 "common ancestor)")
            if RATIO in grid and "weight" in grid:
                raise ValueError(f"methods.{method}: give ratio or weight, not both")
        if self.search == "grid":
            self.candidates()  # every candidate is a valid Recipe, or the spec is refused here
        else:
            for method in self.grids():
                self._probe_space(method)
        return self

    def _probe_space(self, method: str) -> None:
        """Refuse an Optuna space that can propose an invalid candidate. The rules that join parameters
        (density ± epsilon, weights summing to 0) are linear, so a box of ranges breaks one iff one of its
        corners, a point just inside a corner (DELLA's rule does not apply at density 1 but just below
        it), or 0 does; those are built as candidates, with every value of each list."""
        import itertools

        grid = self.grids()[method]
        axes = {}
        for key, values in grid.items():
            if isinstance(values, Range):
                lo, hi = values.low, values.high
                step = (hi - lo) * 1e-9
                probes = list(dict.fromkeys([lo, hi, *([0.0] if lo < 0 < hi else []), lo + step, hi - step]))
                axes[key] = [[v] * values.gradient for v in probes] if values.gradient else probes
            else:
                axes[key] = list(values)
        combos = list(itertools.islice(itertools.product(*axes.values()), 4096))
        for combo in combos:
            params = dict(zip(axes, combo))
            try:
                self.candidate(method, params)
            except RecipeError as exc:
                text = str(exc).split(": ", 1)[-1]
                desc = ", ".join(f"{k} {_label(v, 10)}" for k, v in params.items())
                raise ValueError(f"methods.{method}: the optuna space can propose {desc}, which is refused: "
                                 f"{text}") from None

    # -- the grid ------------------------------------------------------------------------------
    def grids(self) -> dict[str, dict[str, Any]]:
        """``{method: {param: [values] | Range}}``: a flat list of scalars is the grid's values, a scalar one value."""
        return {method: {k: v if isinstance(v, (Range, list)) else [v] for k, v in grid.items()}
                for method, grid in self.methods.items()}

    def candidate_recipe(self, method: str, ratio: float | None = None, **params) -> Recipe:
        """The recipe of ``method`` at these parameter values (``ratio`` as described on the class)."""
        m = get_method(method)
        if ratio is not None:
            params[RATIO] = ratio
        common = {"dtype": self.dtype, "out_dtype": self.out_dtype}
        shared: dict[str, Any] = {}
        per_model: dict[str, Any] = {}
        for key, value in params.items():
            if key == RATIO:
                continue
            p = m.param(key)
            if p is None:   # the grid's keys were checked against the method when the spec was parsed
                raise RecipeError(f"{method} has no parameter {key!r}")
            (per_model if p.per_model else shared)[key] = value
        r = params.get(RATIO)
        w_clin = w_inst = per_model.pop("weight", 1.0)
        if r is not None:
            if m.param("weight") is not None:
                w_clin = [complement(x) for x in r] if isinstance(r, list) else complement(r)
                w_inst = r
            else:
                shared["t"] = r
        if m.max_models == 1:   # interpolates from the base to one model: clinical -> instruct
            pair = (ModelEntry(model=self.clinical), ModelEntry(model=self.instruct))
            return Recipe(merge_method=method, base_model=self.clinical, models=pair, parameters=shared, **common)
        weighted = m.param("weight") is not None
        models = tuple(
            ModelEntry(model=ref, parameters={**per_model, **({"weight": w} if weighted else {})})
            for ref, w in ((self.clinical, w_clin), (self.instruct, w_inst)))
        return Recipe(merge_method=method, base_model=self.base if m.needs_base else None, models=models,
                      parameters=shared, **common)

    def candidate(self, method: str, params: dict[str, Any], name: str | None = None,
                  role: str | None = None) -> SweepCandidate:
        ratio = params.get(RATIO)
        name = name or candidate_name(method, params)
        try:
            recipe = self.candidate_recipe(method, **params)
        except ValidationError as exc:
            raise RecipeError(_errors_text(exc, f"candidate {name}")) from None
        return SweepCandidate(name=name, method=method, ratio=ratio if isinstance(ratio, (int, float)) else None,
                         params=dict(params), recipe=recipe, role=role)

    def first_params(self, method: str) -> dict[str, Any]:
        """The first value of every grid entry (a range's low end): one valid point of ``method``'s space."""
        out = {}
        for key, values in self.grids()[method].items():
            if isinstance(values, Range):
                out[key] = [values.low] * values.gradient if values.gradient else values.low
            else:
                out[key] = values[0]
        return out

    def candidates(self) -> list[SweepCandidate]:
        """Every candidate of the grid (a ratio of 0 or 1 is marked as reproducing that parent)."""
        if self.search != "grid":
            raise RecipeError("search: optuna proposes its candidates while it evaluates them; run it with "
                              "the merge_search pipeline (it has no fixed list of candidates to write or evaluate)")
        import itertools

        out = []
        for method, grid in self.grids().items():
            keys = list(grid)
            # the methods form names a candidate by the values that vary (a one-value grid is just the method)
            varying = keys if self.ratio_sweep else [k for k in keys if len(grid[k]) > 1]
            for combo in itertools.product(*(grid[k] for k in keys)):
                params = dict(zip(keys, combo))
                r = params.get(RATIO)
                role = {0.0: "clinical", 1.0: "instruct"}.get(r) if isinstance(r, (int, float)) else None
                name = candidate_name(method, {k: params[k] for k in varying})
                out.append(self.candidate(method, params, name=name, role=role))
        names = [c.name for c in out]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"two candidates are both named {dup!r}: duplicate grid values")
        return out

    def parent_candidates(self) -> list[SweepCandidate]:
        """The parents as candidates (linear with weights (1, 0) and (0, 1): exactly each parent),
        evaluated beside a methods grid for the comparison and the hypervolume's reference."""
        return [self.candidate("linear", {RATIO: 0.0}, name="clinical", role="clinical"),
                self.candidate("linear", {RATIO: 1.0}, name="instruct", role="instruct")]

    def evaluated_candidates(self) -> list[SweepCandidate]:
        """What an evaluation runs: the grid, plus the parents when the grid does not hold them."""
        cands = self.candidates()
        if self.ratio_sweep:   # its ratios 0 and 1 are the parents, if asked for
            return cands
        roles = {c.role for c in cands}
        return [*(p for p in self.parent_candidates() if p.role not in roles), *cands]

    @property
    def parent_refs(self) -> list[str]:
        return [self.clinical, self.instruct] + ([self.base] if self.base else [])


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    return parse_sweep(load_yaml(path), str(path))


def parse_sweep(data: dict, source: str = "sweep") -> SweepSpec:
    return _validated(SweepSpec, data, source)
