"""Every merge parameter has a domain, checked wherever a value occurs, before any tensor is read.

The registry entry (``get_method(m).param(p)``) is the single source: recipes (top-level scalars,
gradients, filtered values, per-model values), sweep grids, Optuna ranges and presets all check
through it. No test here reads a tensor: the parents do not exist."""

from __future__ import annotations

import math
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medmerge.cli import main
from medmerge.errors import RecipeError
from medmerge.merge.methods import METHODS, ParameterError, get_method
from medmerge.merge.recipe import PRESETS_DIR, Recipe, parse_recipe, parse_sweep

A, B, BASE = "/nonexistent/a", "/nonexistent/b", "/nonexistent/base"
PARENTS = {"clinical": A, "instruct": B, "base": BASE}

# The domains, written out independently of the registry: (good values, bad values with their phrase)
DOMAINS = {
    ("ties", "weight"): ([-2.5, 0, 0.3, 7], [(math.nan, r"\.nan is not a finite number"),
                                              (math.inf, r"\.inf is not a finite number")]),
    ("slerp", "t"): ([0, 0.0, 0.25, 1, 1.0], [(-0.1, r"-0\.1 is outside \[0, 1\]"),
                                              (1.5, r"1\.5 is outside \[0, 1\]")]),
    ("ties", "density"): ([1e-6, 0.5, 1], [(0, r"0 is outside \(0, 1\]"), (0.0, r"0\.0 is outside \(0, 1\]"),
                                           (2.0, r"2\.0 is outside \(0, 1\]"), (-0.5, r"-0\.5 is outside")]),
    ("della", "epsilon"): ([0, 0.1, 0.49], [(0.5, r"0\.5 is outside \[0, 0\.5\)"), (-0.01, r"-0\.01 is outside")]),
    ("breadcrumbs", "gamma"): ([0, 0.01, 0.2], [(1, r"1 is outside \[0, 1\)"), (-0.1, r"-0\.1 is outside \[0, 1\)")]),
    ("task_arithmetic", "lambda"): ([0.1, 1, 3.5], [(0, r"0 must be a finite number > 0"),
                                                    (-1.0, r"-1\.0 must be a finite number > 0")]),
    ("ties", "normalize"): ([True, False], [(1, r"1 is not a boolean \(true or false\)"),
                                            ("yes", r"'yes' is not a boolean")]),
    ("dare_ties", "int8_mask"): ([True, False], [(0.0, r"0\.0 is not a boolean")]),
    ("della", "rescale"): ([True, False], [("true", r"'true' is not a boolean")]),
    ("hierarchical_ot", "align"): (["per_projection", "per_layer"], [("per_head", r"'per_head' must be one of "
                                                                                  r"per_projection, per_layer")]),
}
TYPE_ERRORS = [(True, r"true is a boolean; expected"), ("0.5", r"'0\.5' is a string; expected"),
               (None, r"null is not a number"), ({"x": 1}, r"unknown key 'x' in a filtered value")]


def recipe_with(method: str, key: str, value, where: str = "auto") -> dict:
    """A valid recipe of ``method`` with ``key`` set to ``value`` per model (on models[1]) or at the top."""
    m = get_method(method)
    p = m.param(key)
    per_model = p.per_model if where == "auto" else where == "model"
    if m.max_models == 2 and m.min_models == 2:            # hierarchical_ot: base + two models
        data = {"merge_method": method, "base_model": BASE, "models": [{"model": A}, {"model": B}]}
    elif m.max_models == 1:                                 # slerp: base and one other
        data = {"merge_method": method, "base_model": A, "models": [{"model": A}, {"model": B}],
                "parameters": {"t": 0.5}}
    else:
        weighted = {"weight": 0.5} if m.param("weight") else {}
        data = {"merge_method": method, "models": [{"model": A, "parameters": dict(weighted)},
                                                   {"model": B, "parameters": dict(weighted)}]}
        if m.needs_base:
            data["base_model"] = BASE
    if per_model:
        data["models"][1].setdefault("parameters", {})[key] = value
    else:
        data.setdefault("parameters", {})[key] = value
    return data


def path_of(method: str, key: str) -> str:
    return f"models[1].parameters.{key}" if get_method(method).param(key).per_model else f"parameters.{key}"


CASES = [(m, k, v) for (m, k), (good, _) in DOMAINS.items() for v in good]
BAD_CASES = [(m, k, v, msg) for (m, k), (_, bad) in DOMAINS.items() for v, msg in bad]
# mergekit's parameters take gradients and filtered values; a native method's (hierarchical_ot) one value
FORM_CASES = [c for c in BAD_CASES if get_method(c[0]).param(c[1]).forms]


@pytest.mark.parametrize("method, key, value", CASES)
def test_values_in_the_domain_are_accepted(method, key, value):
    r = parse_recipe(recipe_with(method, key, value), "recipe.yml")
    got = r.models[1].parameters[key] if get_method(method).param(key).per_model else r.parameters[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("method, key, value, message", BAD_CASES)
def test_a_scalar_outside_its_domain_names_the_file_and_key(method, key, value, message):
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: {re.escape(path_of(method, key))}: {message}"):
        parse_recipe(recipe_with(method, key, value), "recipe.yml")


@pytest.mark.parametrize("value, message", TYPE_ERRORS)
def test_wrong_types_for_a_number(value, message):
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: models\[1\]\.parameters\.density: {message}"):
        parse_recipe(recipe_with("ties", "density", value), "recipe.yml")


@pytest.mark.parametrize("method, key, value, message", FORM_CASES)
def test_each_element_of_a_gradient_is_checked(method, key, value, message):
    good = DOMAINS[(method, key)][0][0]
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: {re.escape(path_of(method, key))}\[2\]: {message}"):
        parse_recipe(recipe_with(method, key, [good, good, value]), "recipe.yml")


@pytest.mark.parametrize("method, key, value, message", FORM_CASES)
def test_filtered_values_are_checked(method, key, value, message):
    good = DOMAINS[(method, key)][0][0]
    setting = [{"filter": "self_attn", "value": good}, {"filter": "mlp", "value": [good, value]}, {"value": good}]
    path = re.escape(path_of(method, key))
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: {path}\[1\]\.value\[1\]: {message}"):
        parse_recipe(recipe_with(method, key, setting), "recipe.yml")
    # mergekit's single {filter, value} mapping too
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: {re.escape(path_of(method, key))}\.value: {message}"):
        parse_recipe(recipe_with(method, key, {"filter": "mlp", "value": value}), "recipe.yml")


@pytest.mark.parametrize("setting", [["per_layer", "per_projection"], [{"filter": "q_proj", "value": "per_layer"}],
                                     {"value": "per_layer"}])
def test_a_native_methods_parameter_takes_one_value(setting):
    with pytest.raises(RecipeError, match=r"^recipe\.yml: parameters\.align: .*: align takes one value \(one of "
                                          r"per_projection, per_layer\), not a gradient or filtered values$"):
        parse_recipe(recipe_with("hierarchical_ot", "align", setting), "recipe.yml")


def test_per_model_parameters_set_at_the_top_are_checked_there():
    with pytest.raises(RecipeError, match=r"^recipe\.yml: parameters\.density: 2\.0 is outside \(0, 1\]"):
        parse_recipe(recipe_with("ties", "density", 2.0, where="top"), "recipe.yml")


@pytest.mark.parametrize("setting, message", [
    ([], r"an empty list"),
    ([0.5, [0.5]], r"a list is a gradient of values or a list of filtered values"),
    ([{"filter": "mlp"}], r"\[0\]: a filtered value needs value:"),
    ([{"filter": 3, "value": 0.5}], r"\[0\]\.filter: 3 is not a tensor-name substring"),
    ([{"value": {"value": 0.5}}], r"\[0\]\.value: a filtered value is a value or a gradient"),
])
def test_malformed_forms_are_named(setting, message):
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: models\[1\]\.parameters\.weight{message}"
                       if message.startswith(r"\[") else rf"^recipe\.yml: models\[1\]\.parameters\.weight: {message}"):
        parse_recipe(recipe_with("linear", "weight", setting), "recipe.yml")


def test_the_registry_check_is_the_api_for_other_callers():
    density = get_method("dare_ties").param("density")
    density.check(0.5, "x")
    density.check([0.2, {"filter": "mlp", "value": 0.3}][:1], "x")
    with pytest.raises(ParameterError, match=r"^run\.yaml: sweep\.density: 2 is outside \(0, 1\]$"):
        density.check(2, "run.yaml: sweep.density")
    with pytest.raises(ParameterError, match=r"^r: x\.low: 0\.0 is outside \(0, 1\]$"):
        density.check_range(0.0, 0.5, "r: x")
    assert isinstance(ParameterError("x"), RecipeError) and str(density.domain) == "(0, 1]"
    assert {(m.name, p.name): str(p.domain) for m in METHODS.values() for p in m.params}[("slerp", "t")] == "[0, 1]"


# -- rules that join parameters -------------------------------------------------------------------
@pytest.mark.parametrize("method, params, ok", [
    ("della", {"density": 0.5, "epsilon": 0.1}, True),
    ("della", {"density": 0.9, "epsilon": 0.1}, False),           # 0.9 + 0.1 >= 1 (mergekit raises mid-merge)
    ("della", {"density": 0.05, "epsilon": 0.05}, False),         # 0.05 - 0.05 <= 0
    ("della", {"density": 1.0, "epsilon": 0.3}, True),            # density 1 keeps everything: epsilon unused
    ("della", {}, True),                                          # mergekit's defaults: density 1, epsilon 0.15
    ("della_linear", {"density": 0.9}, False),                    # with the default epsilon 0.15
    ("breadcrumbs", {"density": 0.9, "gamma": 0.1}, True),
    ("breadcrumbs", {"density": 0.9, "gamma": 0.2}, False),
    ("breadcrumbs_ties", {"density": 0.99}, True),                # + the default gamma 0.01: 1
    ("breadcrumbs_ties", {"density": 0.995}, False),              # + the default gamma 0.01: 1.005
])
def test_joint_rules(method, params, ok):
    data = recipe_with(method, "weight", 0.5)
    data["models"][1]["parameters"].update(params)
    if ok:
        parse_recipe(data, "recipe.yml")
    else:
        with pytest.raises(RecipeError, match=r"^recipe\.yml: models\[1\]\.parameters: density .* with "
                                              r"(epsilon|gamma) .*(must lie inside \(0, 1\)|at most 1)"):
            parse_recipe(data, "recipe.yml")


def test_a_joint_rule_names_the_default_it_used():
    data = recipe_with("della", "density", 0.9)
    with pytest.raises(RecipeError, match=r"epsilon 0\.15 is mergekit's default$"):
        parse_recipe(data, "recipe.yml")


def test_joint_rules_hold_at_every_gradient_point_and_filter():
    data = recipe_with("della", "density", [0.5, 0.9])
    data["models"][1]["parameters"]["epsilon"] = 0.05
    parse_recipe(data, "recipe.yml")
    data["models"][1]["parameters"]["epsilon"] = [0.05, 0.05, 0.2]  # at 1: 0.9 + 0.2
    with pytest.raises(RecipeError, match=r"density 0\.9 with epsilon 0\.2.*\(at gradient position 1\)"):
        parse_recipe(data, "recipe.yml")
    data["models"][1]["parameters"]["epsilon"] = [{"filter": "mlp", "value": 0.3}, {"value": 0.05}]
    with pytest.raises(RecipeError,
                       match=r"density 0\.9 with epsilon 0\.3.*\(at gradient position 1, tensors matching 'mlp'\)$"):
        parse_recipe(data, "recipe.yml")


@pytest.mark.parametrize("method, weights, normalize, message", [
    ("linear", (0.5, -0.5), None, r"the weights sum to 0, and normalize: true divides by their sum"),
    ("linear", (1, [-1, -0.5]), True, r"the weights sum to 0 \(at gradient position 0\)"),
    ("linear", ([1, -1], 0), None,
     r"the weights' sum changes sign between gradient positions 0 and 1 \(it passes through 0\)"),
    ("ties", (0.3, -0.3), None, r"the weights sum to 0"),
    ("task_arithmetic", (0.3, -0.3), True, r"the weights sum to 0"),
    ("linear", ([{"filter": "mlp", "value": -1}, {"value": 1}], 1), True,
     r"the weights sum to 0 \(tensors matching 'mlp'\)"),
])
def test_normalised_weights_that_sum_to_zero_are_refused(method, weights, normalize, message):
    data = recipe_with(method, "weight", 0.5)
    for entry, w in zip(data["models"], weights):
        entry["parameters"]["weight"] = w
    if normalize is not None:
        data.setdefault("parameters", {})["normalize"] = normalize
    with pytest.raises(RecipeError, match=rf"^recipe\.yml: models\[\*\]\.parameters\.weight: {message}"):
        parse_recipe(data, "recipe.yml")
    data.setdefault("parameters", {})["normalize"] = False     # not normalised: a sum of 0 divides nothing
    parse_recipe(data, "recipe.yml")


def test_task_arithmetic_does_not_normalise_by_default():
    data = recipe_with("task_arithmetic", "weight", -0.5)
    parse_recipe(data, "recipe.yml")            # 0.5 - 0.5 = 0, but normalize defaults to false


# -- sweeps ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("methods, message", [
    ({"dare_ties": {"density": [0.6, 2.0]}}, r"methods\.dare_ties\.density\[1\]: 2\.0 is outside \(0, 1\]"),
    ({"dare_ties": {"density": 0}}, r"methods\.dare_ties\.density: 0 is outside \(0, 1\]"),
    ({"dare_ties": {"density": [True]}}, r"methods\.dare_ties\.density\[0\]: true is a boolean"),
    ({"slerp": {"t": [[0, 0.5, 1.2]]}}, r"methods\.slerp\.t\[0\]\[2\]: 1\.2 is outside \[0, 1\]"),
    ({"linear": {"ratio": [0.5, 1.5]}}, r"methods\.linear\.ratio\[1\]: 1\.5 is outside \[0, 1\]"),
    ({"task_arithmetic": {"lambda": [1, -1]}}, r"methods\.task_arithmetic\.lambda\[1\]: -1 must be"),
    ({"ties": {"normalize": ["yes"]}}, r"methods\.ties\.normalize\[0\]: 'yes' is not a boolean"),
    ({"linear": {"weight": [[{"filter": "mlp", "value": 1}]]}}, r"methods\.linear\.weight\[0\]: a grid value is"),
    ({"della": {"density": [0.6, 0.95], "epsilon": 0.05}},
     r"candidate della-density=0\.95: models\[0\]\.parameters: density 0\.95 with epsilon 0\.05"),
    ({"linear": {"weight": [0.5, 0]}}, r"candidate linear-weight=0: models\[\*\]\.parameters\.weight: the weights sum"),
])
def test_sweep_grid_values_are_checked(methods, message):
    with pytest.raises(RecipeError, match=rf"^sweep\.yml: {message}"):
        parse_sweep({**PARENTS, "methods": methods}, "sweep.yml")


@pytest.mark.parametrize("methods, message", [
    ({"dare_ties": {"density": {"low": 0.0, "high": 0.9}}}, r"methods\.dare_ties\.density\.low: 0\.0 is outside"),
    ({"slerp": {"t": {"low": 0.2, "high": 1.1, "gradient": 3}}}, r"methods\.slerp\.t\.high: 1\.1 is outside \[0, 1\]"),
    ({"linear": {"ratio": {"low": -0.5, "high": 1}}}, r"methods\.linear\.ratio\.low: -0\.5 is outside \[0, 1\]"),
    ({"ties": {"normalize": {"low": 0, "high": 1}}}, r"methods\.ties\.normalize: a \{low, high\} range needs a "
                                                     r"numeric parameter"),
    ({"della": {"density": {"low": 0.5, "high": 1.0}, "epsilon": {"low": 0.0, "high": 0.1}}},
     r"methods\.della: the optuna space can propose .*density 0\.9999999995, epsilon 0\.1, which is refused"),
    ({"linear": {"weight": {"low": -1, "high": 1}}},
     r"methods\.linear: the optuna space can propose weight 0, which is refused: .*weights sum to 0"),
    ({"dare_ties": {"density": {"low": 0.5, "high": 0.9}}, "linear": {"ratio": [0.2, 1.3]}},
     r"methods\.linear\.ratio\[1\]: 1\.3 is outside \[0, 1\]"),
])
def test_optuna_ranges_lie_inside_the_domain(methods, message):
    with pytest.raises(RecipeError, match=rf"^sweep\.yml: {message}"):
        parse_sweep({**PARENTS, "methods": methods, "search": "optuna", "budget": 4}, "sweep.yml")


def test_a_valid_optuna_space_parses():
    spec = parse_sweep({**PARENTS, "search": "optuna", "budget": 4, "methods": {
        "della": {"weight": 0.5, "density": {"low": 0.5, "high": 0.9}, "epsilon": {"low": 0.0, "high": 0.09}},
        "task_arithmetic": {"lambda": {"low": 0.5, "high": 1.5, "log": True}},
        "slerp": {"t": {"low": 0.0, "high": 1.0, "gradient": 3}}}}, "sweep.yml")
    assert spec.first_params("della") == {"weight": 0.5, "density": 0.5, "epsilon": 0.0}


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_shipped_preset_is_in_its_domains(preset):
    spec = parse_sweep({**PARENTS, "preset": preset}, preset)
    for cand in spec.candidates():
        assert isinstance(cand.recipe, Recipe)
    assert len(spec.candidates()) >= 2


def test_cli_refuses_a_density_of_2_before_reading_a_model(tmp_path, capsys):
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(recipe_with("ties", "density", 2.0)))
    assert main(["merge", str(cfg), str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "recipe.yml: models[1].parameters.density: 2.0 is outside (0, 1]" in err, err
    assert not (tmp_path / "out").exists()


# -- derived values keep their decimals ------------------------------------------------------------------
def test_ratio_weights_are_clean_decimals():
    spec = parse_sweep({**PARENTS, "methods": ["linear"], "ratios": [0.0, 0.1, 0.3, 0.7, 0.9, 1.0]}, "sweep.yml")
    weights = {c.name: [m.parameters["weight"] for m in c.recipe.models] for c in spec.candidates()}
    assert weights["linear-0.7"] == [0.3, 0.7] and weights["linear-0.1"] == [0.9, 0.1]
    assert weights["linear-0.9"] == [0.1, 0.9] and weights["linear-0.0"] == [1.0, 0.0]
    cand = next(c for c in spec.candidates() if c.name == "linear-0.7")
    assert "weight: 0.3\n" in cand.recipe.to_yaml() and cand.recipe.tags()["models.0.weight"] == "0.3"
    grad = parse_sweep({**PARENTS, "methods": {"linear": {"ratio": [[0.7, 0.9]]}}}, "s").candidates()[0]
    assert grad.recipe.models[0].parameters["weight"] == [0.3, 0.1]


# -- properties ------------------------------------------------------------------------------------------
# An oracle written apart from the registry: is a scalar in the domain of (method, key)?
def in_domain(key: str, v) -> bool:
    if key in ("normalize", "int8_mask", "rescale"):
        return isinstance(v, bool)
    if key == "align":
        return v in ("per_projection", "per_layer") and isinstance(v, str)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return {"weight": True, "t": 0 <= v <= 1, "density": 0 < v <= 1, "epsilon": 0 <= v < 0.5,
            "gamma": 0 <= v < 1, "lambda": v > 0}[key]


def scalars(setting):
    """Every scalar of a setting (a scalar, a gradient, filtered values)."""
    if isinstance(setting, dict):
        yield from scalars(setting.get("value"))
    elif isinstance(setting, list):
        for e in setting:
            yield from scalars(e)
    else:
        yield setting


numbers = st.one_of(st.floats(-2, 2), st.floats(0, 1), st.sampled_from([0, 1, 0.5, -1, 1e-9, 0.4999]),
                    st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3))
junk = st.one_of(st.booleans(), st.none(), st.text(max_size=4), st.sampled_from(["per_layer", "per_projection"]))
scalar = st.one_of(numbers, numbers, junk)
gradient = st.lists(scalar, min_size=1, max_size=4)
filtered = st.lists(st.fixed_dictionaries({"value": st.one_of(scalar, gradient)},
                                          optional={"filter": st.sampled_from(["mlp", "self_attn", "*"])}),
                    min_size=1, max_size=3)
values = st.one_of(scalar, scalar, scalar, gradient, filtered,
                   st.dictionaries(st.sampled_from(["filter", "value", "valu"]), scalar, max_size=2))


@st.composite
def recipes(draw, shape_only_values: bool):
    method = draw(st.sampled_from(sorted(METHODS)))
    m = METHODS[method]
    key = draw(st.sampled_from([p.name for p in m.params]))
    data = recipe_with(method, key, draw(values if not shape_only_values else scalar))
    for p in m.params:                              # a few more parameters, anywhere
        if draw(st.booleans()) and draw(st.booleans()):
            target = data["models"][0].setdefault("parameters", {}) if p.per_model and draw(st.booleans()) \
                else data.setdefault("parameters", {})
            target[p.name] = draw(values)
    return data


def check_outcome(data: dict, source: str = "recipe.yml") -> None:
    try:
        r = parse_recipe(data, source)
    except RecipeError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith(f"{source}: "), text
        # the message names a key: a parameter's path, or the models' weights
        assert "parameters" in text or "models[" in text, text
        return
    for scope in [r.parameters, *(m.parameters for m in r.models)]:
        for key, setting in scope.items():
            assert all(in_domain(key, v) for v in scalars(setting)), (key, setting)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes(shape_only_values=True))
def test_property_a_scalar_parses_iff_it_is_in_the_domain(data):
    check_outcome(data)
    scopes = [data.get("parameters", {}), *(m.get("parameters", {}) for m in data["models"])]
    if all(in_domain(k, v) for s in scopes for k, v in s.items()):
        method = METHODS[data["merge_method"]]
        try:
            parse_recipe(data, "recipe.yml")
        except RecipeError as exc:                   # only a joint rule may refuse values each in their domain
            assert method.rules or "weights" in str(exc), str(exc)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes(shape_only_values=False))
def test_property_any_value_parses_in_domain_or_fails_in_one_line(data):
    check_outcome(data)


grid_values = st.one_of(scalar, st.lists(st.one_of(scalar, gradient), min_size=0, max_size=3),
                        st.fixed_dictionaries({"low": numbers, "high": numbers},
                                              optional={"gradient": st.sampled_from([2, 3]), "log": st.booleans()}))


@st.composite
def sweeps(draw):
    chosen = draw(st.lists(st.sampled_from(sorted(METHODS)), min_size=1, max_size=2, unique=True))
    methods = {}
    for method in chosen:
        names = [p.name for p in METHODS[method].params] + ["ratio"]
        keys = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
        methods[method] = {k: draw(grid_values) for k in keys}
    search = draw(st.sampled_from(["grid", "optuna"]))
    return {**PARENTS, "methods": methods, "search": search, **({"budget": 3} if search == "optuna" else {})}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweeps())
def test_property_a_sweep_parses_in_domain_or_fails_in_one_line(data):
    try:
        spec = parse_sweep(data, "sweep.yml")
    except RecipeError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith("sweep.yml: "), text
        return
    if spec.search == "grid":
        for cand in spec.candidates():
            for scope in [cand.recipe.parameters, *(m.parameters for m in cand.recipe.models)]:
                for key, setting in scope.items():
                    assert all(in_domain(key, v) for v in scalars(setting)), (cand.name, key, setting)
    else:
        for method, grid in spec.grids().items():
            for key, entry in grid.items():
                ends = [entry.low, entry.high] if hasattr(entry, "low") else [v for g in entry for v in scalars(g)]
                assert all(in_domain("t" if key == "ratio" else key, v) for v in ends), (method, key, entry)
