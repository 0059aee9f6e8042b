"""YAML read strictly: a key written twice, a non-finite number, a boolean or a string where a number
belongs are each one line naming the file and the key; ordinary YAML reads as before."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from medmerge.cli import main
from medmerge.errors import RecipeError
from medmerge.io.yaml_file import load_strict, read_yaml
from medmerge.merge.recipe import load_recipe, load_sweep

RECIPE = """\
merge_method: ties
base_model: /nonexistent/base
models:
  - model: /nonexistent/a
    parameters: {weight: 0.5, density: 0.5}
  - model: /nonexistent/b
    parameters:
      weight: 0.5
      density: DENSITY
"""


def write(tmp_path, text: str, name: str = "recipe.yml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("a: 1\nb: 2\na: 3\n", r"recipe\.yml: a: key 'a' written twice in one mapping \(lines 1 and 3\)$"),
    (RECIPE.replace("density: DENSITY", "density: 0.5\n      weight: 0.7"),
     r"recipe\.yml: models\[1\]\.parameters\.weight: key 'weight' written twice in one mapping \(lines 8 and 10\)"),
    ("models:\n  - {model: a, model: b}\n", r"recipe\.yml: models\[0\]\.model: key 'model' written twice"),
    # 1 and 0x1 are one key once read; 1 and '1' are two
    ("x: {1: a, 0x1: b}\n", r"recipe\.yml: x\.1: key 1 written twice"),
])
def test_a_key_written_twice_is_an_error_naming_it(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        read_yaml(write(tmp_path, text), RecipeError)


def test_distinct_keys_that_look_alike_are_fine(tmp_path):
    assert read_yaml(write(tmp_path, "x: {1: a, '1': b}\n"), RecipeError) == {"x": {1: "a", "1": "b"}}


@pytest.mark.parametrize("value", [".nan", ".NaN", ".inf", "-.inf", "+.Inf", "1.0e+999"])
def test_non_finite_numbers_are_refused_with_their_key(tmp_path, value):
    p = write(tmp_path, RECIPE.replace("DENSITY", value))
    shown = value.replace("+", "[+]")
    with pytest.raises(RecipeError, match=rf"recipe\.yml: models\[1\]\.parameters\.density: {shown} "
                                          r"is not a finite number \(line 9\)"):
        load_recipe(p)


def test_non_finite_in_a_gradient_and_at_the_top(tmp_path):
    with pytest.raises(RecipeError, match=r"sweep\.yml: methods\.slerp\.t\[0\]\[1\]: \.nan is not a finite number"):
        read_yaml(write(tmp_path, "methods:\n  slerp:\n    t: [[0, .nan, 1]]\n", "sweep.yml"), RecipeError)
    with pytest.raises(RecipeError, match=r"x\.yml: the document: \.inf is not a finite number"):
        read_yaml(write(tmp_path, ".inf\n", "x.yml"), RecipeError)


def test_ordinary_yaml_reads_as_before(tmp_path):
    text = ("a: &anchor {b: 1, c: [0.5, -2, true, null, x]}\nd: *anchor\ne: {<<: *anchor, b: 2}\n"
            "f: 1_000\ng: '0.5'\nh: 2026-01-01\n")
    assert read_yaml(write(tmp_path, text), RecipeError) == yaml.safe_load(text)


def test_exponents_without_a_dot_are_numbers_as_in_yaml_1_2(tmp_path):
    got = read_yaml(write(tmp_path, "a: 1e-3\nb: 2E5\nc: -3e+2\nd: '1e-3'\ne: 1.5e-3\n"), RecipeError)
    assert got == {"a": 0.001, "b": 200000.0, "c": -300.0, "d": "1e-3", "e": 0.0015}


@pytest.mark.parametrize("value, message", [
    ("true", r"models\[1\]\.parameters\.density: true is a boolean; expected a number in \(0, 1\]"),
    ("yes", r"models\[1\]\.parameters\.density: true is a boolean"),           # YAML 1.1's yes
    ("'0.5'", r"models\[1\]\.parameters\.density: '0\.5' is a string; expected a number in \(0, 1\]"),
    ("half", r"models\[1\]\.parameters\.density: 'half' is a string"),
])
def test_a_boolean_or_a_string_where_a_number_belongs(tmp_path, value, message):
    with pytest.raises(RecipeError, match=r"recipe\.yml: " + message):
        load_recipe(write(tmp_path, RECIPE.replace("DENSITY", value)))


def test_booleans_where_booleans_belong_and_ints_for_reals(tmp_path):
    text = RECIPE.replace("DENSITY", "1") + "parameters: {normalize: true, int8_mask: false, lambda: 2}\n"
    r = load_recipe(write(tmp_path, text))
    assert r.parameters == {"normalize": True, "int8_mask": False, "lambda": 2}
    assert r.models[1].parameters["density"] == 1


@pytest.mark.parametrize("extra, message", [
    ("random_seed: true\n", r"recipe\.yml: random_seed: true is a boolean, not a number$"),
    ("random_seed: '7'\n", r"recipe\.yml: random_seed: '7' is a string, not a number$"),
    ("random_seed: 7.5\n", r"recipe\.yml: random_seed: 7\.5 is not an integer$"),
])
def test_strict_numbers_outside_parameters(tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(write(tmp_path, RECIPE.replace("DENSITY", "0.5") + extra))


@pytest.mark.parametrize("text, message", [
    ("methods: [linear]\nratios: [0.5, true]\n", r"ratios\[1\]: true is a boolean, not a number$"),
    ("methods: {slerp: {t: {low: '0', high: 1}}}\nsearch: optuna\nbudget: 2\n",
     r"methods\.slerp\.t: low: '0' is a string, not a number$"),
    ("methods: {slerp: {t: {low: 0, high: 1}}}\nsearch: optuna\nbudget: true\n",
     r"budget: true is a boolean, not a number$"),
    ("methods: {slerp: {t: {low: 0, high: 1, gradient: 2.0}}}\nsearch: optuna\nbudget: 2\n",
     r"methods\.slerp\.t: gradient: 2\.0 is not an integer$"),
    ("methods: [linear]\nseed: '3'\n", r"seed: '3' is a string, not a number$"),
])
def test_strict_numbers_in_a_sweep(tmp_path, text, message):
    p = write(tmp_path, "clinical: /nonexistent/c\ninstruct: /nonexistent/i\n" + text, "sweep.yml")
    with pytest.raises(RecipeError, match=r"sweep\.yml: " + message):
        load_sweep(p)


def test_cli_refuses_a_repeated_key_in_one_line_before_reading_a_model(tmp_path, capsys):
    p = write(tmp_path, RECIPE.replace("density: DENSITY", "density: 0.5\n      density: 0.6"))
    assert main(["merge", str(p), str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medmerge: error:") and err.count("\n") == 1, err
    assert "recipe.yml: models[1].parameters.density: key 'density' written twice" in err
    assert not (tmp_path / "out").exists()


# -- properties ------------------------------------------------------------------------------------
keys = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
leaves = st.one_of(st.integers(-1000, 1000), finite, st.booleans(), st.none(),
                   st.text(alphabet="xyz /-", min_size=1, max_size=8))
documents = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(keys, inner, max_size=4)), max_leaves=12)


def _paths(doc, path=()):
    """Every (path, mapping) in the document."""
    if isinstance(doc, dict):
        yield path, doc
        for k, v in doc.items():
            yield from _paths(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, path + (i,))


@settings(max_examples=50, deadline=None)
@given(documents)
def test_any_dumped_document_reads_back_the_same(doc):
    assert load_strict(yaml.safe_dump(doc)) == doc


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(keys, documents, min_size=1, max_size=4), st.data())
def test_a_repeated_key_anywhere_is_refused_naming_it(doc, data):
    path, mapping = data.draw(st.sampled_from([(p, m) for p, m in _paths(doc) if m]))
    key = data.draw(st.sampled_from(sorted(mapping)))
    text = yaml.safe_dump(doc, default_flow_style=True, width=10**6)
    # the chosen mapping written in flow style with its key once more: {a: 1, key: 0, key: 0}
    marked = yaml.safe_dump(_replace(doc, path, {**mapping, key: "@@DUP@@"}), default_flow_style=True, width=10**6)
    dup = marked.replace("'@@DUP@@'", f"0, {key}: 0")
    assert load_strict(text) == doc
    with pytest.raises(ValueError, match=rf"key {key!r} written twice in one mapping"):
        load_strict(dup)


def _replace(doc, path, new):
    if not path:
        return new
    head, *rest = path
    if isinstance(doc, dict):
        return {**doc, head: _replace(doc[head], tuple(rest), new)}
    return [(_replace(v, tuple(rest), new) if i == head else v) for i, v in enumerate(doc)]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(keys, documents, min_size=1, max_size=4), st.data(),
       st.sampled_from([math.nan, math.inf, -math.inf]))
def test_a_non_finite_number_anywhere_is_refused_naming_its_key(doc, data, bad):
    path, mapping = data.draw(st.sampled_from([(p, m) for p, m in _paths(doc) if m]))
    key = data.draw(st.sampled_from(sorted(mapping)))
    text = yaml.safe_dump(_replace(doc, path, {**mapping, key: bad}))
    shown = ".".join(str(k) for k in (*path, key))   # the test's keys are never ints: a path is dotted
    with pytest.raises(ValueError, match=r"is not a finite number") as info:
        load_strict(text)
    assert str(info.value).split(": ")[0].replace("[", ".").replace("]", "") == shown
