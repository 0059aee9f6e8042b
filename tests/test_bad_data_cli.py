"""Bad generation datasets, through the CLI (`medmerge validate-data`): a message naming the failed
expectation and an offending id, exit 2, and no output but the report asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factory import SHARED_DATA as REAL
from factory import llama_config, write_tokenizer

from medmerge.cli import main


def rows(n: int = 6) -> list[dict]:
    return [{"id": f"ex-{i}", "input": f"w{i} w{i + 1} w{i + 2}", "target": f"w{i + 3}"} for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["validate-data", *map(str, args)])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def files_under(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def assert_only(d: Path, *names: str) -> None:
    """Nothing but ``names`` under ``d``: no partial report, no temporary file."""
    assert files_under(d) == set(names)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A word-level tokenizer (no special tokens added) beside a config with a 64-position context."""
    d = tmp_path_factory.mktemp("tok")
    write_tokenizer(d)
    (d / "config.json").write_text(json.dumps(llama_config()))  # max_position_embeddings = 64
    return d


@pytest.mark.parametrize("content,name", [("", "empty.jsonl"), ("\n  \n", "blank.jsonl"),
                                          ("id,input,target\n", "header_only.csv")])
def test_empty_dataset(capsys, tmp_path, content, name):
    src = tmp_path / name
    src.write_text(content)
    code, out, err = run_cli(capsys, src)
    assert code == 2 and out == ""
    assert f"{src}: no rows (empty dataset)" in err
    assert "row_count" in err and "observed 0" in err
    assert "missing" not in err  # the columns are not what is wrong
    assert_only(tmp_path, name)


def test_empty_after_split_filter(capsys, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{**r, "split": "train"} for r in rows()])
    code, _, err = run_cli(capsys, src, "--split", "validation")
    assert code == 2 and "(split 'validation'): no rows (empty dataset)" in err


def test_duplicate_ids(capsys, tmp_path):
    recs = rows()
    recs[4]["id"] = "ex-1"
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    code, out, err = run_cli(capsys, src)
    assert code == 2 and out == ""
    assert "ids_unique" in err and "ids: ex-1" in err
    assert "failed 1 of 7 expectation(s)" in err
    assert_only(tmp_path, "d.jsonl")


def test_empty_target(capsys, tmp_path):
    recs = rows()
    recs[2]["target"] = "  \n "
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    code, out, err = run_cli(capsys, src)
    assert code == 2 and out == ""
    assert "target_not_empty" in err and "non-empty target" in err and "ids: ex-2" in err
    assert_only(tmp_path, "d.jsonl")


def test_input_longer_than_context(capsys, tmp_path, tok_dir):
    recs = rows()
    recs[3]["input"] = " ".join(["w7"] * 100)  # 100 tokens > 64 positions
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    report = tmp_path / "out" / "report.md"
    code, out, err = run_cli(capsys, src, "--tokenizer", tok_dir, "--report", report)
    assert code == 2 and out == ""
    assert "input_fits_context" in err and "input <= 64 tokens" in err and "ids: ex-3" in err
    # the report is the one output a failed validation writes (atomically: no temporary left)
    md = report.read_text()
    assert "FAILED" in md and "longest input 100 tokens" in md and "`ex-3`" in md
    assert_only(tmp_path, "d.jsonl", "out/report.md")


def test_context_length_sources(capsys, tmp_path, tok_dir):
    recs = rows()
    recs[0]["input"] = " ".join(["w1"] * 20)
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    # a tokenizer alone reports transformers' "unknown" sentinel: that is no context length
    bare = tmp_path / "bare_tok"
    write_tokenizer(bare)
    code, _, err = run_cli(capsys, src, "--tokenizer", bare)
    assert code == 2 and "cannot tell the context length" in err and "--max-input-tokens" in err
    code, _, err = run_cli(capsys, src, "--tokenizer", bare, "--max-input-tokens", 10)
    assert code == 2 and "input <= 10 tokens" in err and "ids: ex-0" in err
    # a known model_max_length smaller than the config's 64 positions wins
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    (bare / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 16}))
    code, _, err = run_cli(capsys, src, "--tokenizer", bare)
    assert code == 2 and "input <= 16 tokens" in err
    code, out, _ = run_cli(capsys, src, "--tokenizer", tok_dir)  # 20 tokens fit 64
    assert code == 0 and "longest input 20 tokens <= 64" in out
    code, _, err = run_cli(capsys, src, "--tokenizer", tmp_path / "no_such_tokenizer")
    assert code == 2 and "cannot load tokenizer" in err and "no_such_tokenizer" in err


def test_context_length_is_one_rule_wherever_it_is_asked():
    """medmerge.merge.arch.context_length: the config's positions (or an alias), the tokenizer's model_max_length
    unless it is transformers' 'unknown' sentinel, the smaller of the two."""
    from types import SimpleNamespace

    from medmerge.merge.arch import context_length

    assert context_length({"max_position_embeddings": 64}) == 64
    assert context_length({"n_positions": 1024, "hidden_size": 8}) == 1024          # GPT-2's name for it
    assert context_length(SimpleNamespace(seq_length=2048)) == 2048
    assert context_length({"max_position_embeddings": 64}, SimpleNamespace(model_max_length=16)) == 16
    assert context_length({"max_position_embeddings": 64}, SimpleNamespace(model_max_length=int(1e30))) == 64
    assert context_length(None, SimpleNamespace(model_max_length=int(1e30))) is None
    assert context_length({"max_position_embeddings": True}) is None and context_length({}) is None


def test_validate_data_and_the_finetune_pipeline_count_the_same_context(capsys, tmp_path, tok_dir):
    """The pipeline's data check (input_token_limit) allows what ``medmerge validate-data --tokenizer`` allows:
    here the tokenizer's model_max_length 16, below the config's 64 positions."""
    import shutil

    from medmerge.finetune import FinetuneConfig, input_token_limit

    model = tmp_path / "model"
    shutil.copytree(tok_dir, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 16}))
    ft = FinetuneConfig.model_validate({"initialisations": [{"name": "m", "path": str(model)}],
                                        "output_dir": str(tmp_path / "out")})
    assert input_token_limit(ft, str(model))[1] == 16
    recs = rows()
    recs[0]["input"] = " ".join(["w1"] * 20)
    code, _, err = run_cli(capsys, write_jsonl(tmp_path / "d.jsonl", recs), "--tokenizer", model)
    assert code == 2 and "input <= 16 tokens" in err


def test_wrong_columns(capsys, tmp_path):
    recs = [{"id": r["id"], "text": r["input"], "summary": r["target"]} for r in rows()]
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    report = tmp_path / "report.json"
    code, out, err = run_cli(capsys, src, "--report", report)
    assert code == 2 and out == ""
    assert f"{src}:1: missing column(s) 'input', 'target'; record has 'id', 'text', 'summary'" in err
    assert_only(tmp_path, "d.jsonl")  # the file could not be read: no report
    # naming the columns is the fix
    code, out, _ = run_cli(capsys, src, "--input-field", "text", "--target-field", "summary")
    assert code == 0 and "6 rows, 7/7 expectations met" in out


def test_wrong_csv_header(capsys, tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("uid,input,target\nex-0,a,b\n")
    code, _, err = run_cli(capsys, src)
    assert code == 2 and "missing column(s) 'id'; header has 'uid', 'input', 'target'" in err
    assert_only(tmp_path, "d.csv")


def test_duplicate_input_target_pairs(capsys, tmp_path):
    recs = rows()
    recs[5]["input"], recs[5]["target"] = recs[1]["input"], recs[1]["target"]
    src = write_jsonl(tmp_path / "d.jsonl", recs)
    code, out, err = run_cli(capsys, src)
    assert code == 2 and out == ""
    assert "input_target_pairs_unique" in err and "ids: ex-1, ex-5" in err
    assert_only(tmp_path, "d.jsonl")


def test_row_count_bounds(capsys, tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", rows(6))
    code, _, err = run_cli(capsys, src, "--min-rows", 10)
    assert code == 2 and "row_count" in err and "between 10 and" in err and "observed 6" in err
    code, _, err = run_cli(capsys, src, "--max-rows", 5)
    assert code == 2 and "between 1 and 5 rows" in err


@pytest.mark.parametrize("args,message", [
    (["--max-input-tokens", "10"], "--max-input-tokens needs --tokenizer"),
    (["--min-rows", "5", "--max-rows", "2"], "--max-rows (2) < --min-rows (5)"),
    (["--report", "out.txt"], "use a .md or .json file name"),
])
def test_bad_arguments(capsys, tmp_path, args, message):
    src = write_jsonl(tmp_path / "d.jsonl", rows())
    code, _, err = run_cli(capsys, src, *args)
    assert code == 2 and message in err
    assert_only(tmp_path, "d.jsonl")


def test_missing_source(capsys, tmp_path):
    code, _, err = run_cli(capsys, tmp_path / "nope.jsonl")
    assert code == 2 and "nope.jsonl: no such file" in err
    code, _, err = run_cli(capsys, "mts_dialog", "--data-dir", tmp_path)
    assert code == 2 and "task 'mts_dialog': data directory" in err and "does not exist" in err


@pytest.mark.shared_data("mts_dialog/validation.jsonl")
def test_real_data_passes(capsys, tmp_path):
    report = tmp_path / "out" / "report.json"
    code, out, err = run_cli(capsys, REAL / "mts_dialog" / "validation.jsonl", "--report", report)
    assert code == 0 and err == ""
    assert "100 rows, 7/7 expectations met" in out and f"wrote {report}" in out
    data = json.loads(report.read_text())
    assert data["success"] is True and data["n_rows"] == 100 and len(data["expectations"]) == 7
    assert_only(tmp_path, "out/report.json")
    # the same split by task name (default split of a task: train; here named)
    code, out, _ = run_cli(capsys, "mts_dialog", "--data-dir", REAL, "--split", "validation")
    assert code == 0 and "ok: dataset 'mts_dialog [validation]': 100 rows" in out
