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

import math
import os
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medmerge.errors import RecipeError
from medmerge.methods import MethodDef, get_method

Scalar = Union[bool, int, float, str]
# a scalar, a gradient (list of scalars interpolated across layers), or filtered values
ParameterValue = Union[Scalar, list[Scalar], list[dict[str, Any]], dict[str, Any]]
DTYPES = ("float32", "float16", "bfloat16", "float64")
MERGEKIT_ONLY_KEYS = ("slices", "modules", "tokenizer", "chat_template")


def _check_dtype(v: str | None) -> str | None:
    if v is not None and v not in DTYPES:
        raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(DTYPES)}")
    return v


DType = Annotated[Optional[str], AfterValidator(_check_dtype)]


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
    random_seed: int | None = None

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
        for key, value in self.parameters.items():
            p = method.param(key)
            if p is None:
                raise ValueError(f"parameter {key!r} is not declared by {method.name} (it takes: {declared})")
            if p.choices and value not in p.choices:
                raise ValueError(f"parameter {key!r} of {method.name} must be one of {p.choices}; got {value!r}")
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

    def with_resolved_paths(self, resolve) -> "Recipe":
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


def _errors_text(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc!r}"
            if loc in MERGEKIT_ONLY_KEYS:
                msg += " (slices/modules/tokenizer/chat_template recipes are not supported by medmerge; use mergekit)"
            loc = ""
        parts.append(f"{loc}: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(parts)


def load_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"config file {p} does not exist")
    if not p.is_file():
        raise RecipeError(f"config file {p} is not a file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecipeError(f"config file {p} is not UTF-8 text (binary?); expected a YAML file") from None
    except OSError as exc:
        raise RecipeError(f"config file {p} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_recipe(data: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except RecipeError:
        raise
    except ValidationError as exc:
        raise RecipeError(_errors_text(exc, source)) from None


def load_recipe(path: str | os.PathLike) -> Recipe:
    return parse_recipe(load_yaml(path), str(path))


def ratio_label(r: float) -> str:
    """0.0 -> '0.0', 0.25 -> '0.25', 1 -> '1.0'."""
    s = f"{r:.4f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


DEFAULT_RATIOS = tuple(round(i / 10, 1) for i in range(11))
SWEEP_METHODS = ("linear", "slerp")


class Candidate(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    method: str
    ratio: float
    recipe: Recipe


class SweepSpec(BaseModel):
    """A ratio grid between a clinical model (ratio 0) and an instruct model (ratio 1).

    Linear at α weights (clinical, instruct) by (1 − α, α); slerp at t takes clinical as
    base_model. ``base`` is optional and recorded (later methods and checks use it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    clinical: str
    instruct: str
    base: str | None = None
    methods: tuple[str, ...] = ("linear", "slerp")
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    dtype: DType = None
    out_dtype: DType = None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v):
        if not v:
            raise ValueError("methods: at least one method is required")
        for m in v:
            get_method(m)
            if m not in SWEEP_METHODS:
                raise ValueError(f"method {m!r} cannot be swept over a ratio; use one of {', '.join(SWEEP_METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError("methods: duplicates")
        return v

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        if not v:
            raise ValueError("ratios: at least one ratio is required")
        for r in v:
            if not (0.0 <= r <= 1.0) or math.isnan(r):
                raise ValueError(f"ratio {r} is outside [0, 1]")
        if len({ratio_label(r) for r in v}) != len(v):
            raise ValueError("ratios: duplicates")
        return v

    def candidate_recipe(self, method: str, ratio: float) -> Recipe:
        common = {"dtype": self.dtype, "out_dtype": self.out_dtype}
        if method == "linear":
            return Recipe(
                merge_method="linear",
                models=(
                    ModelEntry(model=self.clinical, parameters={"weight": 1.0 - ratio}),
                    ModelEntry(model=self.instruct, parameters={"weight": ratio}),
                ),
                **common,
            )
        return Recipe(
            merge_method="slerp",
            base_model=self.clinical,
            models=(ModelEntry(model=self.clinical), ModelEntry(model=self.instruct)),
            parameters={"t": ratio},
            **common,
        )

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(name=f"{m}-{ratio_label(r)}", method=m, ratio=r, recipe=self.candidate_recipe(m, r))
            for m in self.methods
            for r in self.ratios
        ]

    @property
    def parent_refs(self) -> list[str]:
        return [self.clinical, self.instruct] + ([self.base] if self.base else [])


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    data = load_yaml(path)
    try:
        return SweepSpec.model_validate(data)
    except RecipeError:
        raise
    except ValidationError as exc:
        raise RecipeError(_errors_text(exc, str(path))) from None
