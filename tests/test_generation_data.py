"""Generation datasets: loader, Great Expectations validation, nested few-shot subsets."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydantic
import pytest
from factory import SHARED_DATA

from medmerge.errors import MedmergeError
from medmerge.generation.data import TASKS, DataError, GenerationExample, load_task, task_splits
from medmerge.generation.subsets import few_shot_subsets, seeded_order
from medmerge.generation.validation import (
    DataValidationError,
    ValidationReport,
    count_tokens,
    validate_dataset,
)

needs_shared = pytest.mark.shared_data("mts_dialog")


def whitespace_tokenizer(text: str) -> list[str]:
    return text.split()


# ============================================================================================
# loader
# ============================================================================================

@needs_shared
def test_load_real_mts_dialog_splits():
    train = load_task("mts_dialog", "train", data_dir=SHARED_DATA)
    assert len(train) == 1201
    ex = train[0]
    assert isinstance(ex, GenerationExample)
    assert ex.id == "train-0" and ex.input.startswith("Doctor:") and ex.target
    assert ex.extra["section_header"] == "GENHX" and ex.extra["split"] == "train"
    assert "input" not in ex.extra and "id" not in ex.extra

    test = load_task("mts_dialog", "test", data_dir=SHARED_DATA)          # test1 + test2
    assert len(test) == 320 and {e.extra["split"] for e in test} == {"test1", "test2"}
    assert len(load_task("mts_dialog", "test2", data_dir=SHARED_DATA)) == 160
    everything = load_task("mts_dialog", data_dir=SHARED_DATA)
    assert len(everything) == 1201 + 100 + 160 + 160
    assert task_splits("mts_dialog", SHARED_DATA) == ["train", "validation", "test1", "test2"]


@needs_shared
def test_load_real_task_via_env_and_validation_split_passes(monkeypatch):
    monkeypatch.setenv("MEDMERGE_DATA_DIR", str(SHARED_DATA))
    val = load_task("mts_dialog", "validation")
    assert len(val) == 100
    report = validate_dataset(val, name="mts_dialog/validation", min_rows=50,
                              max_input_tokens=4096, tokenizer=whitespace_tokenizer)
    assert report.success, report.failure_message()


def test_frozen_example():
    ex = GenerationExample(id="a", input="x", target="y")
    with pytest.raises(pydantic.ValidationError, match="Instance is frozen"):
        ex.input = "z"  # type: ignore[misc]


def test_load_csv_custom_columns(tmp_path):
    p = tmp_path / "notes.csv"
    pd.DataFrame({
        "note_id": ["n1", "n2"],
        "dialogue": ['Doctor: Hi, "quoted", with comma\nPatient: two lines', "Doctor: bye"],
        "summary": ["Greeting.", "Farewell."],
        "section": ["CC", "PLAN"],
    }).to_csv(p, index=False)
    out = load_task(p, id_field="note_id", input_field="dialogue", target_field="summary")
    assert [e.id for e in out] == ["n1", "n2"]
    assert out[0].input == 'Doctor: Hi, "quoted", with comma\nPatient: two lines'
    assert out[0].target == "Greeting." and out[0].extra == {"section": "CC"}


def test_load_jsonl_custom_columns_and_split_filter(tmp_path):
    p = tmp_path / "bhc.jsonl"
    rows = [{"key": 1, "src": "long note one", "ref": "bhc one", "split": "train"},
            {"key": 2, "src": "long note two", "ref": "bhc two", "split": "validation"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    out = load_task(str(p), id_field="key", input_field="src", target_field="ref")
    assert [(e.id, e.input, e.target) for e in out] == [("1", "long note one", "bhc one"),
                                                        ("2", "long note two", "bhc two")]
    only_val = load_task(p, "validation", id_field="key", input_field="src", target_field="ref")
    assert [e.id for e in only_val] == ["2"]


def test_task_directory_layout_and_test_globbing(tmp_path):
    d = tmp_path / TASKS["aci_bench"]
    d.mkdir()
    for split, n in (("train", 3), ("validation", 1), ("test1", 2), ("test2", 2)):
        (d / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}-{i}", "input": "in", "target": f"t{i}", "split": split}) + "\n"
            for i in range(n)))
    assert len(load_task("aci_bench", "test", data_dir=tmp_path)) == 4
    assert [e.id for e in load_task("aci_bench", "validation", data_dir=tmp_path)] == ["validation-0"]
    assert len(load_task("aci_bench", data_dir=tmp_path)) == 8
    with pytest.raises(DataError, match=r"no split 'dev'.*available: train, validation, test1, test2"):
        load_task("aci_bench", "dev", data_dir=tmp_path)


@pytest.mark.parametrize("content,match", [
    ('{"id": "a", "input": "x", "target": "y"}\n{"id": "b", "input": "x"\n', r"bad\.jsonl:2: not valid JSON"),
    ('{"id": "a", "input": "x"}\n', r"bad\.jsonl:1: missing column\(s\) 'target'"),
    ('{"id": "a", "input": null, "target": "y"}\n', r"bad\.jsonl:1: 'input' must be text, got null"),
    ('["a", "x", "y"]\n', r"bad\.jsonl:1: expected a JSON object"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, match):
    p = tmp_path / "bad.jsonl"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_task(p)


@pytest.mark.parametrize("content,match", [
    ("id,input\na,x\n", r"bad\.csv: missing column\(s\) 'target'; header has 'id', 'input'"),
    ("id,input,target\na,x,y\nb,x,y,extra\n", r"bad\.csv:3: unreadable CSV row: 4 field\(s\), header has 3"),
    ('id,input,target\na,"x,y\n', r"bad\.csv:\d+: unreadable CSV"),
    ("", r"bad\.csv: empty file"),
])
def test_csv_errors_name_file(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        load_task(p)


def test_loader_errors_missing_file_format_and_data_dir(tmp_path, monkeypatch):
    assert issubclass(DataError, MedmergeError) and issubclass(DataValidationError, MedmergeError)
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        load_task(missing)
    with pytest.raises(DataError, match="not a known task"):
        load_task("no_such_task")
    odd = tmp_path / "data.parquet"
    odd.write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"data\.parquet: cannot tell the format"):
        load_task(odd)
    monkeypatch.delenv("MEDMERGE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="no data directory"):
        load_task("mts_dialog", "train")
    with pytest.raises(DataError, match="does not exist"):
        load_task("mts_dialog", "train", data_dir=tmp_path)
    nosplit = tmp_path / "nosplit.jsonl"
    nosplit.write_text('{"id": "a", "input": "x", "target": "y"}\n')
    with pytest.raises(DataError, match=r"nosplit\.jsonl: split='train' given but the file has no 'split'"):
        load_task(nosplit, "train")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,input,target\na,caf\xe9,y\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8"):
        load_task(latin)


# ============================================================================================
# validation
# ============================================================================================

def clean_rows(n: int = 12) -> list[dict]:
    return [{"id": f"ex-{i}", "input": f"Doctor: visit {i} about symptom {i}. Patient: fine.",
             "target": f"Note {i}: patient fine.", "split": "train"} for i in range(n)]


def test_clean_dataset_passes():
    examples = [GenerationExample(id=r["id"], input=r["input"], target=r["target"]) for r in clean_rows()]
    report = validate_dataset(examples, name="clean", min_rows=5, max_rows=100,
                              max_input_tokens=64, tokenizer=whitespace_tokenizer)
    assert report.success and report.raise_if_failed() is report
    names = [e.name for e in report.expectations]
    assert names == ["required_columns", "ids_not_null", "ids_unique", "input_not_empty", "target_not_empty",
                     "input_target_pairs_unique", "row_count", "input_fits_context"]
    assert report.outcome("row_count").observed_value == 12
    assert report.outcome("required_columns").observed_value == ["id", "input", "target"]
    assert report.outcome("input_fits_context").observed_value["max_input_tokens"] == 8
    assert report.skipped == {} and report.gx_version.startswith("1.")
    assert report.seconds < 10
    # artifacts
    again = ValidationReport.model_validate_json(report.to_json())
    assert again == report
    md = report.to_markdown()
    assert "PASSED" in md and "| ids_unique | `expect_column_values_to_be_unique` | ✅ |" in md


def _bad(kind: str) -> tuple[list[dict], dict, str, list[str]]:
    """(rows, validate kwargs, failing expectation, strings the error message must contain)."""
    rows = clean_rows()
    kwargs: dict = {}
    if kind == "missing_column":
        for r in rows:
            del r["target"]
        return rows, kwargs, "required_columns", ["missing: target"]
    if kind == "empty_input":
        rows[3]["input"] = ""
        return rows, kwargs, "input_not_empty", ["ex-3"]
    if kind == "whitespace_target":
        rows[5]["target"] = "  \n\t "
        return rows, kwargs, "target_not_empty", ["ex-5"]
    if kind == "duplicate_ids":
        rows[7]["id"] = "ex-2"
        return rows, kwargs, "ids_unique", ["ex-2"]
    if kind == "duplicate_pair":
        rows[9]["input"], rows[9]["target"] = rows[4]["input"], rows[4]["target"]
        return rows, kwargs, "input_target_pairs_unique", ["ex-4", "ex-9"]
    if kind == "too_few_rows":
        return rows, {"min_rows": 20}, "row_count", ["between 20 and", "observed 12"]
    if kind == "too_many_rows":
        return rows, {"max_rows": 10}, "row_count", ["between 1 and 10 rows", "observed 12"]
    if kind == "input_too_long":
        rows[6]["input"] = " ".join(["word"] * 50)
        return rows, {"max_input_tokens": 20, "tokenizer": whitespace_tokenizer}, "input_fits_context", ["ex-6"]
    raise AssertionError(kind)


BAD_KINDS = ["missing_column", "empty_input", "whitespace_target", "duplicate_ids", "duplicate_pair",
             "too_few_rows", "too_many_rows", "input_too_long"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_dataset_fails_its_expectation(kind):
    rows, kwargs, expectation, needles = _bad(kind)
    report = validate_dataset(rows, name=kind, **kwargs)
    assert not report.success
    assert [e.name for e in report.failed] == [expectation], report.failure_message()
    with pytest.raises(DataValidationError, match=re.escape(expectation)) as err:
        report.raise_if_failed()
    message = str(err.value)
    assert f"dataset {kind!r}" in message and expectation in message
    for needle in needles:
        assert needle in message, message
    assert err.value.report is report
    failed = report.outcome(expectation)
    if expectation not in ("required_columns", "row_count"):
        assert failed.offending_ids == needles
        assert failed.unexpected_count == (2 if kind == "duplicate_ids" else len(needles))  # rows, not ids
    assert "FAILED" in report.to_markdown() and json.loads(report.to_json())["success"] is False


def test_missing_column_skips_dependent_expectations():
    rows, kwargs, _, _ = _bad("missing_column")
    report = validate_dataset(rows, max_input_tokens=100, tokenizer=whitespace_tokenizer, **kwargs)
    assert set(report.skipped) == {"target_not_empty", "input_target_pairs_unique"}
    assert "input_fits_context" in [e.name for e in report.expectations]
    assert "not run: target_not_empty, input_target_pairs_unique" in report.failure_message()


def _wordlevel_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "word": 1, "doctor": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


@pytest.mark.parametrize("flavour", ["tokenizers", "transformers"])
def test_context_check_with_local_hf_tokenizers(flavour):
    tok = _wordlevel_tokenizer()
    if flavour == "transformers":
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    assert count_tokens(["word word doctor", "x"], tok) == [3, 1]
    rows, kwargs, expectation, needles = _bad("input_too_long")
    kwargs["tokenizer"] = tok
    report = validate_dataset(rows, **kwargs)
    assert [e.name for e in report.failed] == [expectation]
    assert report.outcome(expectation).offending_ids == needles
    assert report.outcome(expectation).observed_value["max_input_tokens"] == 50


def test_offending_ids_capped_custom_fields_and_nulls():
    rows = clean_rows(12)
    df = pd.DataFrame(rows).rename(columns={"id": "uid", "input": "findings", "target": "impression"})
    df.loc[0:7, "findings"] = "   "
    df.loc[10, "findings"] = None
    report = validate_dataset(df, id_field="uid", input_field="findings", target_field="impression")
    failed = report.outcome("input_not_empty")
    assert not failed.success and failed.unexpected_count == 9
    assert failed.offending_ids == ["ex-0", "ex-1", "ex-2", "ex-3", "ex-4"]
    # the 8 identical whitespace inputs have distinct targets, so pairs stay unique
    assert [e.name for e in report.failed] == ["input_not_empty"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        validate_dataset(clean_rows(), max_input_tokens=10)
    with pytest.raises(ValueError, match="max_rows"):
        validate_dataset(clean_rows(), min_rows=5, max_rows=2)


# ============================================================================================
# few-shot subsets
# ============================================================================================

def _examples(n: int) -> list[GenerationExample]:
    return [GenerationExample(id=f"ex-{i:04d}", input=f"in {i}", target=f"out {i}") for i in range(n)]


def test_subsets_nested_sizes_and_full():
    examples = _examples(300)
    subsets = few_shot_subsets(examples, seed=0)
    assert list(subsets) == [8, 16, 32, 64, 128, 256, "full"]      # 512 > 300: skipped
    for k, v in subsets.items():
        assert len(v) == (300 if k == "full" else k)
    keys = [8, 16, 32, 64, 128, 256, "full"]
    for small, big in zip(keys, keys[1:]):
        assert subsets[big][: len(subsets[small])] == subsets[small]
        assert {e.id for e in subsets[small]} <= {e.id for e in subsets[big]}
    assert sorted(e.id for e in subsets["full"]) == [e.id for e in examples]
    assert subsets[8] != examples[:8]                                 # actually shuffled


def test_subsets_reproducible_seed_sensitive_and_order_independent():
    examples = _examples(100)
    a = few_shot_subsets(examples, sizes=(8, 16), seed=3)
    b = few_shot_subsets(examples, sizes=(8, 16), seed=3)
    c = few_shot_subsets(examples, sizes=(8, 16), seed=4)
    assert a == b
    assert [e.id for e in a[16]] != [e.id for e in c[16]]
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    assert few_shot_subsets(shuffled, sizes=(8, 16), seed=3) == a


def test_subsets_edge_cases():
    examples = _examples(16)
    out = few_shot_subsets(examples, sizes=(16, 8, 8, 32), include_full=False)
    assert list(out) == [8, 16]                                       # sorted, merged, 32 skipped
    assert few_shot_subsets([], sizes=(8,)) == {"full": []}
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f"few-shot sizes must be positive integers, got {bad!r}")):
            few_shot_subsets(examples, sizes=(bad,))
    # plain dicts without ids fall back to positions
    plain = [{"input": str(i)} for i in range(20)]
    assert len(few_shot_subsets(plain, sizes=(8,))[8]) == 8
    assert seeded_order(plain, seed=1) == seeded_order(plain, seed=1)


def test_subsets_pinned_order():
    """The seeded order is pinned: changing the algorithm would silently change published subsets."""
    eight = few_shot_subsets(_examples(100), sizes=(8,), seed=0)[8]
    assert [e.id for e in eight] == ["ex-0026", "ex-0094", "ex-0021", "ex-0036",
                                     "ex-0087", "ex-0004", "ex-0000", "ex-0093"]


def test_subsets_deterministic_across_processes():
    code = ("from medmerge.generation.subsets import few_shot_subsets\n"
            "from medmerge.generation.data import GenerationExample\n"
            "ex=[GenerationExample(id=f'ex-{i:04d}', input='i', target='t') for i in range(100)]\n"
            "print(','.join(e.id for e in few_shot_subsets(ex, sizes=(8,), seed=7)[8]))\n")
    here = [e.id for e in few_shot_subsets(_examples(100), sizes=(8,), seed=7)[8]]
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True, cwd=Path(__file__).resolve().parents[1])
        assert out.stdout.strip().split(",") == here
