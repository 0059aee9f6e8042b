"""Property-based tests (hypothesis) of the rules every writing command keeps, whatever the input.

For generated recipes, sweep specs, output paths and option values, valid and broken:

* ``medmerge merge`` / ``medmerge sweep`` exit 0 with whole, finite checkpoints, or exit 2 with one line
  (``medmerge: error: ...``) and no traceback;
* no file outside OUT_DIR is created, changed or removed (the tree is snapshotted before and after;
  on exit 2 nothing at all changed);
* the parents are byte-identical afterwards;
* an output the user owns (the current directory or an ancestor, a parent, a directory medmerge did
  not write, a file) is always refused.

The argument parsers and the output-path check are tested on their own too, with more examples (they
write nothing). Examples are bounded so the file runs in the fast tier.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import click
import pytest
import torch
import yaml
from factory import make_family, read, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from medmerge.cli import main

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                          HealthCheck.too_slow])
PARSER = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


def outside(snap: dict[str, str], rel: str | None) -> dict[str, str]:
    """The snapshot without ``rel``, what lies below it, and the directories leading to it (a merge into
    a/b/out creates a/ and a/b/)."""
    if rel is None:
        return snap
    return {k: v for k, v in snap.items()
            if k != rel and not k.startswith(rel + "/") and not (rel.startswith(k + "/") and v == "dir")}


def run(argv: list[str], cwd: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(before)
    return code, err.getvalue()


def assert_one_line(err: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medmerge: error: ") and "Traceback" not in err, err


def assert_whole_finite_checkpoint(d: Path, fam) -> None:
    sd = read(d)
    assert sorted(sd) == sorted(read(fam["m0"])), d
    assert all(bool(torch.isfinite(t.float()).all()) for t in sd.values()), d
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file() and (d / ".medmerge-output.json").is_file()


# ------------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------------
ODD_NUMBERS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 1e6, -1e-12, float("nan"), float("inf"), float("-inf")])
GOOD_NUMBER = st.sampled_from([0.1, 0.25, 0.5, 0.6, 0.75, 1.0])
ANY_NUMBER = st.one_of(GOOD_NUMBER, ODD_NUMBERS, st.floats(-1.5, 1.5, allow_nan=False, width=32), st.booleans(),
                       st.sampled_from(["0.5", "", "half", None]))
GOOD_DTYPE = st.sampled_from([None, "float32", "bfloat16"])
ANY_DTYPE = st.sampled_from([None, "float32", "bfloat16", "float16", "float8", 3])


@st.composite
def recipes(draw, m0: str, m1: str, base: str, broken: bool) -> str:
    """A recipe as YAML text. Valid: a known method with parameters in their domains. ``broken``: any
    method name, any values (NaN, Inf, booleans, strings, out of range), sometimes a key written twice
    or the text cut short; such a recipe may still be valid."""
    good = ["linear", "task_arithmetic", "ties", "slerp", "dare_linear"]
    method = draw(st.sampled_from(good + (["nearswap", "frankenmerge", "passthrough"] if broken else [])))
    number = ANY_NUMBER if broken else GOOD_NUMBER
    models = [{"model": m0}, {"model": m1}]
    doc: dict = {"merge_method": method}
    if method in ("linear", "task_arithmetic", "ties", "dare_linear"):
        for m in models:
            m["parameters"] = {"weight": draw(number)}
            if method in ("ties", "dare_linear"):
                m["parameters"]["density"] = draw(number)
        if draw(st.booleans()):
            doc["parameters"] = {"normalize": draw(st.one_of(st.booleans(), number) if broken else st.booleans())}
    elif method in ("slerp", "nearswap"):
        doc["parameters"] = {"t": draw(number)}
    if method in ("task_arithmetic", "ties", "dare_linear"):
        doc["base_model"] = base
    elif method in ("slerp", "nearswap"):
        doc["base_model"] = m0
    doc["models"] = models
    dtype = draw(ANY_DTYPE if broken else GOOD_DTYPE)
    if dtype is not None:
        doc["dtype"] = dtype
    text = yaml.safe_dump(doc, sort_keys=False)
    damage = draw(st.sampled_from(["none", "repeat-key", "cut"])) if broken else "none"
    if damage == "repeat-key":
        text += "merge_method: linear\n"
    elif damage == "cut":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text


SIZE_TEXT = st.one_of(
    st.sampled_from(["5GB", "1MB", "500", "2GiB", "1.5MB", "0", "-5MB", "abc", "1e400GB", "nanGB", "inf", "12XB",
                     " 64 KiB ", "0.1B", "1e3MB", ""]),
    st.text(alphabet="0123456789.eE-+ KMGTiBb", min_size=1, max_size=8),
)

# Output locations, relative to the per-example root (the cwd is root/work). ``owned`` says whether
# the user owns what is there (so it must never be replaced).
PLACES = {
    "new": ("work/out", False),
    "new-deep": ("work/a/b/out", False),
    "cwd": ("work", True),
    "cwd-dot": (".", True),
    "ancestor": ("..", True),
    "medmerge-output": ("work/made", False),
    "foreign-dir": ("work/mine", True),
    "medmerge-output-plus-file": ("work/made-plus", True),
    "empty-dir": ("work/empty", False),
    "a-file": ("work/notes.txt", True),
    "below-a-file": ("work/notes.txt/out", True),
    "long-name": ("work/" + "x" * 260, True),
    "parent": ("PARENT", True),
    "inside-parent": ("PARENT/sub", True),
    "holding-parents": ("FAMROOT", True),
    "symlink-to-made": ("work/link", True),
}


def prepare(root: Path) -> None:
    """A user's working tree: a recipe's folder with notes, a directory of their own, an empty one, a
    directory medmerge wrote (its marker lists its files), one with a file added, and a symlink."""
    work = root / "work"
    work.mkdir()
    (work / "notes.txt").write_text("my notes")
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("years of work")
    (work / "empty").mkdir()
    for name, extra in (("made", False), ("made-plus", True)):
        d = work / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        (d / ".medmerge-output.json").write_text(json.dumps({"written_by": "medmerge", "files": ["config.json"]}))
        if extra:
            (d / "user.txt").write_text("added by the user")
    (work / "link").symlink_to(work / "made", target_is_directory=True)


def place(key: str, root: Path, fam) -> tuple[str, Path]:
    """The OUT_DIR argument (relative to the cwd root/work where it can be) and its absolute path."""
    rel, _ = PLACES[key]
    if rel.startswith("PARENT"):
        p = fam["m0"] / rel.removeprefix("PARENT").lstrip("/") if rel != "PARENT" else fam["m0"]
        return str(p), p
    if rel == "FAMROOT":
        return str(fam["m0"].parent), fam["m0"].parent
    if rel in (".", ".."):
        return rel, Path(os.path.normpath(root / "work" / rel))
    return os.path.relpath(root / rel, root / "work"), root / rel


# ------------------------------------------------------------------------------------------------
# the writing commands
# ------------------------------------------------------------------------------------------------
@PROPERTY
@given(data=st.data())
def test_merge_keeps_every_invariant(fam, data):
    # one dimension at a time is drawn from broken values too, so a good share of examples really merge
    broken = data.draw(st.sampled_from([None, None, "out", "sizes", "recipe"]), label="broken")
    key = data.draw(st.sampled_from(sorted(PLACES) if broken == "out" else ["new", "new-deep", "medmerge-output",
                                                                            "empty-dir"]), label="out")
    overwrite = data.draw(st.booleans(), label="overwrite")
    size = SIZE_TEXT if broken == "sizes" else st.sampled_from(["1KB", "4KiB", "5GB", "500B", "8MiB"])
    shard = data.draw(st.one_of(st.none(), size), label="max-shard-size")
    chunk = data.draw(st.one_of(st.none(), size), label="chunk-size")
    recipe = data.draw(recipes(str(fam["m0"]), str(fam["m1"]), str(fam["base"]), broken == "recipe"),
                       label="recipe")
    parents_before = snapshot(fam["m0"].parent)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root)
        (root / "work" / "recipe.yml").write_text(recipe)
        arg, target = place(key, root, fam)
        argv = ["merge", "recipe.yml", arg, "-q"] + (["--overwrite"] if overwrite else [])
        argv += ["--max-shard-size", shard] if shard is not None else []
        argv += ["--chunk-size", chunk] if chunk is not None else []
        before = snapshot(root)
        existed = os.path.lexists(target)
        code, err = run(argv, root / "work")
        after = snapshot(root)
        event(f"exit {code}")
        assert code in (0, 2), (code, err)
        if code == 2:
            assert_one_line(err)
            assert after == before
        else:
            assert not PLACES[key][1], f"{key}: the user's {target} was replaced"
            assert overwrite or not existed
            assert_whole_finite_checkpoint(target, fam)
            rel = target.relative_to(root).as_posix()
            assert outside(after, rel) == outside(before, rel)
            assert not [k for k in after if ".medmerge-tmp-" in k]
    assert snapshot(fam["m0"].parent) == parents_before


@PROPERTY
@given(data=st.data())
def test_sweep_keeps_every_invariant(fam, data):
    broken = data.draw(st.sampled_from([None, None, "out", "spec"]), label="broken")
    fine = ["new", "new-deep", "foreign-dir", "empty-dir"]
    # (a sweep's OUT_DIR may hold the parents, like any folder of the user's: it only gains candidates)
    key = data.draw(st.sampled_from(fine + ["cwd", "cwd-dot", "ancestor", "a-file", "below-a-file", "parent",
                                            "inside-parent"] if broken == "out" else fine), label="out")
    overwrite = data.draw(st.booleans(), label="overwrite")
    spec = {"clinical": str(fam["m0"]), "instruct": str(fam["m1"])}
    if data.draw(st.booleans(), label="base"):
        spec["base"] = str(fam["base"])
    methods = st.lists(st.sampled_from(["linear", "slerp"]), min_size=1, max_size=2, unique=True)
    ratios = st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=3, unique=True)
    if broken == "spec":
        methods = st.one_of(methods, st.lists(st.sampled_from(["linear", "slerp", "ties", "lerp"]), max_size=3),
                            st.sampled_from(["linear", 3]))
        ratios = st.one_of(ratios, st.lists(ANY_NUMBER, max_size=3), ANY_NUMBER)
    spec["methods"] = data.draw(methods, label="methods")
    spec["ratios"] = data.draw(ratios, label="ratios")
    dtype = data.draw(ANY_DTYPE if broken == "spec" else GOOD_DTYPE, label="dtype")
    if dtype is not None:
        spec["dtype"] = dtype
    parents_before = snapshot(fam["m0"].parent)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root)
        (root / "work" / "sweep.yml").write_text(yaml.safe_dump(spec))
        arg, target = place(key, root, fam)
        before = snapshot(root)
        code, err = run(["sweep", "sweep.yml", arg, "-q"] + (["--overwrite"] if overwrite else []), root / "work")
        after = snapshot(root)
        event(f"exit {code}")
        assert code in (0, 2), (code, err)
        if code == 2:
            assert_one_line(err)
            assert after == before
        else:
            assert key not in ("cwd", "cwd-dot", "ancestor", "a-file", "below-a-file", "parent", "inside-parent"), key
            rel = target.relative_to(root).as_posix()
            made = {k.split("/")[0] for k in outside({k[len(rel) + 1:]: v for k, v in after.items()
                                                      if k.startswith(rel + "/")}, None)}
            kept = {k[len(rel) + 1:]: v for k, v in before.items() if k.startswith(rel + "/")}
            new = sorted(made - {k.split("/")[0] for k in kept})
            assert new, err
            for name in new:
                assert_whole_finite_checkpoint(target / name, fam)
            assert all(after.get(f"{rel}/{k}") == v for k, v in kept.items())   # the user's files in OUT_DIR stay
            assert outside(after, rel) == outside(before, rel)
    assert snapshot(fam["m0"].parent) == parents_before


# ------------------------------------------------------------------------------------------------
# the parsers and the path check on their own (nothing written: many examples)
# ------------------------------------------------------------------------------------------------
@PARSER
@given(SIZE_TEXT)
def test_a_size_is_a_positive_whole_number_of_bytes_or_a_usage_error(text):
    from medmerge.io.args import SIZE

    try:
        n = SIZE.convert(text, None, None)
    except click.BadParameter as exc:
        assert str(text) in str(exc) or repr(text) in str(exc)
    else:
        assert isinstance(n, int) and n >= 1


@PARSER
@given(st.one_of(st.text(max_size=6), st.integers(-5, 5), st.floats(allow_nan=True)))
def test_counts_and_memory_figures_are_checked(value):
    from medmerge.io.args import BATCH_SIZE, GIB, count

    for parser, ok in ((count(1), lambda v: isinstance(v, int) and v >= 1),
                       (count(0), lambda v: isinstance(v, int) and v >= 0),
                       (BATCH_SIZE, lambda v: v == "auto" or (isinstance(v, int) and v >= 1)),
                       (GIB, lambda v: isinstance(v, float) and math.isfinite(v) and v > 0)):
        try:
            v = parser.convert(value, None, None)
        except click.BadParameter:
            continue
        assert ok(v), (parser, value, v)


PATH_PARTS = st.sampled_from(["out", ".", "..", "notes.txt", "mine", "made", "made-plus", "empty", "link", "x" * 300,
                              "new", "a b", "ü", ""])


@PARSER
@given(parts=st.lists(PATH_PARTS, min_size=1, max_size=4), overwrite=st.booleans(), container=st.booleans())
def test_check_output_dir_writes_nothing_and_refuses_in_one_line(fam, parts, overwrite, container):
    from medmerge.errors import OutputError
    from medmerge.io.atomic import check_output_dir

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root)
        before = snapshot(root)
        path = os.path.join(*parts) if any(parts) else ""
        cwd = os.getcwd()
        os.chdir(root / "work")
        try:
            try:
                check_output_dir(path, overwrite=overwrite, protect=[str(fam["m0"])], container=container)
                accepted = True
            except OutputError as exc:
                accepted = False
                assert "\n" not in str(exc)
            real = Path(os.path.realpath(path or "."))
        finally:
            os.chdir(cwd)
        assert snapshot(root) == before
        if accepted:
            assert real != root / "work" and not (root / "work").is_relative_to(real)
            if real.exists() and not container:
                assert overwrite and real.name in ("made", "empty"), real
