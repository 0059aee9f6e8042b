"""The model card written beside every merged checkpoint: titled with the checkpoint's own name (never the
temporary directory it was written into), and its body, without the YAML front matter, for MLflow's
model-version description."""

from __future__ import annotations

import pytest
import yaml
from factory import make_family

from medmerge.merge.card import card_body
from medmerge.merge.engine import merge, sweep
from medmerge.merge.methods import FORMULAS, METHODS
from medmerge.merge.recipe import SweepSpec, parse_recipe


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


def front_matter_and_title(card: str) -> tuple[dict, str]:
    _, matter, body = card.split("---\n", 2)
    return yaml.safe_load(matter), body.splitlines()[0]


def test_a_merged_checkpoint_is_titled_with_its_directorys_name(fam, tmp_path):
    recipe = parse_recipe({"merge_method": "linear", "models": [
        {"model": str(fam["m0"]), "parameters": {"weight": 0.7}},
        {"model": str(fam["m1"]), "parameters": {"weight": 0.3}}]})
    out = merge(recipe, tmp_path / "clinical-linear-0.3", quiet=True)
    matter, title = front_matter_and_title((out / "README.md").read_text())
    assert title == "# clinical-linear-0.3"
    assert matter == {"library_name": "transformers", "tags": ["merge", "medmerge", "linear"]}
    assert f"## Method\n\n```\n{FORMULAS['linear']}\n```" in (out / "README.md").read_text()


def test_every_method_carries_its_formula():
    assert set(FORMULAS) | {"hierarchical_ot"} == set(METHODS)
    for name, m in METHODS.items():
        assert m.formula.startswith(m.pretty_name), name      # the card names the method, then its formula


def test_every_sweep_candidate_is_titled_with_the_candidates_name(fam, tmp_path):
    spec = SweepSpec(clinical=str(fam["m0"]), instruct=str(fam["m1"]), methods=["linear", "slerp"],
                     ratios=[0.3, 0.7])
    outs = sweep(spec, tmp_path / "out", quiet=True)
    assert sorted(outs) == ["linear-0.3", "linear-0.7", "slerp-0.3", "slerp-0.7"]
    for name, path in outs.items():
        assert front_matter_and_title((path / "README.md").read_text())[1] == f"# {name}"


@pytest.mark.parametrize("card, body", [
    ("---\nlibrary_name: transformers\ntags:\n- merge\n---\n# linear-0.3\n\nA merge.\n", "# linear-0.3\n\nA merge.\n"),
    # a rule inside the body is the body's own
    ("---\ntags: [merge]\n---\n\n# m\n\n---\n\nafter a rule\n", "# m\n\n---\n\nafter a rule\n"),
    ("---\r\ntags: [merge]\r\n---\r\n# m\r\n", "# m\r\n"),
    # no front matter: unchanged, even with rules further down
    ("# m\n---\nnot: front matter\n---\n", "# m\n---\nnot: front matter\n---\n"),
    ("", ""),
])
def test_card_body_drops_only_the_leading_front_matter(card, body):
    assert card_body(card) == body


def test_the_written_cards_body_starts_at_its_title(fam, tmp_path):
    recipe = parse_recipe({"merge_method": "slerp", "base_model": str(fam["m0"]),
                           "models": [{"model": str(fam["m0"])}, {"model": str(fam["m1"])}],
                           "parameters": {"t": 0.5}})
    out = merge(recipe, tmp_path / "slerp-0.5", quiet=True)
    body = card_body((out / "README.md").read_text())
    assert body.startswith("# slerp-0.5\n") and "library_name" not in body and "sha256" in body
