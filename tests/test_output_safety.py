"""Nothing a user owns is ever lost, and no nonsense model is ever written, through the command line.

Each refusal exits 2 with one line naming the path (or value) and the reason, and the whole tree around
it (recipe, parents, the user's files) is byte for byte what it was; a failed or interrupted merge or
sweep leaves no directory it created. Two writers to one output end with one whole checkpoint and one
clean refusal, however their steps interleave."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import pytest
import torch
import yaml
from factory import make_family, read, snapshot
from safetensors.torch import save_file

from medmerge.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("medmerge: error: "), lines[0]
    return lines[0]


def linear(a: Path, b: Path, **top) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 0.5}},
                                                 {"model": str(b), "parameters": {"weight": 0.5}}], **top}


def whole_checkpoint(d: Path, fam) -> None:
    """A checkpoint medmerge wrote: every tensor of the parents, all finite, config, tokenizer and marker."""
    sd = read(d)
    assert sorted(sd) == sorted(read(fam["m0"]))
    assert all(torch.isfinite(t).all() for t in sd.values())
    assert {"config.json", "tokenizer.json", "medmerge.json", ".medmerge-output.json"} <= {p.name for p in d.iterdir()}


@pytest.fixture
def work(tmp_path, fam, monkeypatch):
    """A user's working directory holding a recipe and a file of their own; the cwd of the test."""
    w = tmp_path / "work"
    w.mkdir()
    (w / "recipe.yml").write_text(yaml.safe_dump(linear(fam["m0"], fam["m1"])))
    (w / "notes.txt").write_text("my notes")
    monkeypatch.chdir(w)
    return w


# ------------------------------------------------------------------------------------------------
# the two data-loss cases of issue 19
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("out,words", [(".", "is the current directory"), ("..", "contains the current directory"),
                                       ("CWD", "is the current directory")])
def test_overwrite_never_replaces_the_current_directory_or_an_ancestor(work, fam, capsys, out, words):
    root = work.parent
    before, parents = snapshot(root), snapshot(fam["m0"].parent)
    code = main(["merge", "recipe.yml", str(work) if out == "CWD" else out, "--overwrite", "-q"])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and words in line
    assert snapshot(root) == before and snapshot(fam["m0"].parent) == parents


def test_a_second_merge_into_the_same_new_directory_is_refused(work, fam, capsys):
    assert main(["merge", "recipe.yml", "out", "-q"]) == 0
    first = snapshot(work)
    assert main(["merge", "recipe.yml", "out", "-q"]) == 2
    assert "output directory out already exists (use --overwrite to replace it)" in \
        one_error_line(capsys.readouterr().err)
    assert snapshot(work) == first
    whole_checkpoint(work / "out", fam)


# ------------------------------------------------------------------------------------------------
# --overwrite replaces only what medmerge wrote
# ------------------------------------------------------------------------------------------------
def test_overwrite_replaces_a_checkpoint_medmerge_wrote(work, fam, capsys):
    assert main(["merge", "recipe.yml", "out", "-q"]) == 0
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(fam["m0"], fam["m1"], dtype="bfloat16")))
    assert main(["merge", "recipe.yml", "out", "-q", "--overwrite"]) == 0
    assert read(work / "out")["model.norm.weight"].dtype == torch.bfloat16
    whole_checkpoint(work / "out", fam)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "out", "recipe.yml"]   # no aside, no temp


def _foreign_dir(work: Path, fam) -> Path:
    d = work / "out"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    return d


def _checkpoint_plus_a_file(work: Path, fam) -> Path:
    assert main(["merge", "recipe.yml", "out", "-q"]) == 0
    (work / "out" / "eval-notes.md").write_text("kept by the user")
    return work / "out"


def _someone_elses_checkpoint(work: Path, fam) -> Path:
    return Path(shutil.copytree(fam["base"], work / "out"))   # a model medmerge did not write (not a parent here)


def _a_file(work: Path, fam) -> Path:
    (work / "out").write_text("a file, not a directory")
    return work / "out"


def _a_link_to_a_medmerge_output(work: Path, fam) -> Path:
    assert main(["merge", "recipe.yml", "real", "-q"]) == 0
    (work / "out").symlink_to(work / "real", target_is_directory=True)
    return work / "out"


@pytest.mark.parametrize("make,words", [
    (_foreign_dir, "was not written by medmerge (it has no .medmerge-output.json)"),
    (_checkpoint_plus_a_file, "it holds eval-notes.md, which medmerge did not write"),
    (_someone_elses_checkpoint, "was not written by medmerge"),
    (_a_file, "is a file"),
    (_a_link_to_a_medmerge_output, "is a symbolic link"),
], ids=["foreign-dir", "checkpoint-plus-file", "foreign-checkpoint", "file", "symlink"])
def test_overwrite_refuses_what_medmerge_did_not_write(work, fam, capsys, make, words):
    make(work, fam)
    capsys.readouterr()
    before = snapshot(work.parent)
    assert main(["merge", "recipe.yml", "out", "-q", "--overwrite"]) == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before


# ------------------------------------------------------------------------------------------------
# paths: one line naming the path and the reason
# ------------------------------------------------------------------------------------------------
def test_output_below_a_regular_file(work, capsys):
    before = snapshot(work)
    assert main(["merge", "recipe.yml", "notes.txt/out", "-q"]) == 2
    assert f"{work / 'notes.txt'} is a file, not a directory" in one_error_line(capsys.readouterr().err)
    assert snapshot(work) == before


def test_output_name_too_long(work, capsys):
    before = snapshot(work)
    assert main(["merge", "recipe.yml", "deep/" + "n" * 300, "-q"]) == 2
    assert "file name too long (300 bytes" in one_error_line(capsys.readouterr().err)
    assert snapshot(work) == before


@pytest.mark.parametrize("flag,words", [(os.ST_RDONLY, "(read-only file system)"), (0, "(permission denied)")])
def test_output_in_a_directory_we_cannot_write(work, capsys, monkeypatch, flag, words):
    """(As root, chmod cannot forbid anything; the check asks the file system, so we answer for it.)"""
    locked = work / "locked"
    locked.mkdir()
    real_statvfs, real_access = os.statvfs, os.access

    class Vfs:
        def __init__(self, st):
            self.st = st

        def __getattr__(self, name):
            return getattr(self.st, name)

        @property
        def f_flag(self):
            return self.st.f_flag | flag

    monkeypatch.setattr(os, "statvfs", lambda p: Vfs(real_statvfs(p)) if Path(p) == locked else real_statvfs(p))
    monkeypatch.setattr(os, "access", lambda p, m, **kw: False if Path(p) == locked else real_access(p, m, **kw))
    assert main(["merge", "recipe.yml", "locked/out", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot write in {locked} {words}" in line
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("err,words", [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left"),
                                       (errno.EACCES, "permission denied"), (errno.EDQUOT, "disk quota exceeded")])
def test_an_os_error_while_writing_is_one_line_and_leaves_nothing(work, fam, capsys, monkeypatch, err, words):
    from medmerge.io import writer

    def failing(self, name, t):
        raise OSError(err, os.strerror(err), str(self.out_dir / "model.safetensors"))

    monkeypatch.setattr(writer.StreamingCheckpointWriter, "write", failing)
    before = snapshot(work.parent)
    assert main(["merge", "recipe.yml", "new/deeper/out", "-q"]) == 2
    assert words in one_error_line(capsys.readouterr().err).lower()
    assert snapshot(work.parent) == before           # new/ and new/deeper/ were created by the merge: gone too


def test_an_os_error_on_our_temporary_name_names_the_output_the_user_gave(work, fam, capsys, monkeypatch):
    """Where the OS refuses the staging directory (``/sys/out``: EPERM; ``/proc/x``: ENOENT), the line names the
    output as typed, never the ``.medmerge-tmp-...`` name medmerge stages it under."""
    import tempfile

    from medmerge.io import atomic

    def refuse(suffix=None, prefix=None, dir=None):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), os.path.join(dir, f"{prefix}x1y2z3"))

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert main(["merge", "recipe.yml", "outdir", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{work / 'outdir'}: operation not permitted" in line and atomic.TMP_PREFIX not in line
    assert not (work / "outdir").exists()


def test_an_internal_error_is_one_line_with_exit_1_and_debug_shows_the_traceback(work, capsys, monkeypatch):
    import medmerge.merge.engine

    def bug(*a, **kw):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(medmerge.merge.engine, "merge", bug)
    assert main(["merge", "recipe.yml", "out", "-q"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "ZeroDivisionError: division by zero" in line and "--debug" in line
    for argv, env in ((["--debug", "merge", "recipe.yml", "out"], {}), (["merge", "recipe.yml", "out"],
                                                                       {"MEDMERGE_DEBUG": "1"})):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.strip().endswith("for the traceback)")


# ------------------------------------------------------------------------------------------------
# failed or interrupted runs remove every directory they created, and nothing else
# ------------------------------------------------------------------------------------------------
def _sweep_spec(work: Path, fam, **extra) -> Path:
    spec = work / "sweep.yml"
    spec.write_text(yaml.safe_dump({"clinical": str(fam["m0"]), "instruct": str(fam["m1"]),
                                    "methods": ["linear"], "ratios": [0.0, 0.5, 1.0], **extra}))
    return spec


@pytest.mark.parametrize("exc,code", [(KeyboardInterrupt, 130), (RuntimeError, 1)])
@pytest.mark.parametrize("out", ["new/sweeps", "existing"])
def test_a_failed_sweep_leaves_no_directory_it_created(work, fam, capsys, monkeypatch, exc, code, out):
    from medmerge.io import writer

    _sweep_spec(work, fam)
    (work / "existing").mkdir()
    (work / "existing" / "keep.txt").write_text("mine")
    calls = {"n": 0}
    real = writer.StreamingCheckpointWriter.write

    def dies_midway(self, name, t):
        calls["n"] += 1
        if calls["n"] == 20:
            raise exc("stop")
        return real(self, name, t)

    monkeypatch.setattr(writer.StreamingCheckpointWriter, "write", dies_midway)
    before = snapshot(work.parent)
    assert main(["sweep", "sweep.yml", out, "-q"]) == code
    one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before


def test_a_failure_at_the_last_rename_takes_back_the_candidates_already_in_place(work, fam, capsys, monkeypatch):
    from medmerge.io import atomic

    _sweep_spec(work, fam)
    assert main(["sweep", "sweep.yml", "sweeps", "-q"]) == 0
    before = snapshot(work.parent)
    real = atomic.rename_noreplace
    renames = []

    def third_fails(src, dst):
        renames.append(dst)
        if len(renames) == 3:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic, "rename_noreplace", third_fails)
    assert main(["sweep", "sweep.yml", "sweeps", "-q", "--overwrite"]) == 2
    assert "input/output error" in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before      # the first two candidates are the old ones again


def test_a_sweep_into_a_folder_of_the_users_keeps_their_files(work, fam, capsys):
    _sweep_spec(work, fam)
    assert main(["sweep", "sweep.yml", ".", "-q"]) == 2      # the cwd itself: refused
    assert "is the current directory" in one_error_line(capsys.readouterr().err)
    (work / "mine").mkdir()
    (work / "mine" / "keep.txt").write_text("mine")
    assert main(["sweep", "sweep.yml", "mine", "-q"]) == 0
    assert (work / "mine" / "keep.txt").read_text() == "mine"
    whole_checkpoint(work / "mine" / "linear-0.5", fam)


# ------------------------------------------------------------------------------------------------
# no non-finite model is ever written
# ------------------------------------------------------------------------------------------------
def test_finite_parents_giving_a_non_finite_output_stop_the_merge(work, fam, capsys):
    """Weights of 1e6 in float16 overflow to Inf: no parameter is out of its domain, the output is."""
    recipe = {"merge_method": "linear", "out_dtype": "float16", "parameters": {"normalize": False},
              "models": [{"model": str(fam["m0"]), "parameters": {"weight": 1e6}},
                         {"model": str(fam["m1"]), "parameters": {"weight": 1e6}}]}
    (work / "big.yml").write_text(yaml.safe_dump(recipe))
    before = snapshot(work.parent)
    assert main(["merge", "big.yml", "a/out", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("medmerge: error: big.yml: ") and "gives Inf values in tensor model." in line
    assert "nothing was written" in line
    assert snapshot(work.parent) == before


# ------------------------------------------------------------------------------------------------
# parents checked as the safetensors library checks them
# ------------------------------------------------------------------------------------------------
def _raw_safetensors(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("header,data,words", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlaps the tensor before it"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, bytes(20), "leaves a gap at byte 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(16), "cover 8 bytes but the data"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "has the wrong size"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "has the wrong size"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "malformed header entry"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8), "lies outside the file"),
], ids=["overlap", "gap", "trailing-bytes", "shape-vs-range", "reversed", "negative-dim", "dtype", "beyond-end"])
def test_malformed_safetensors_headers_are_named(tmp_path, header, data, words):
    from medmerge.errors import CheckpointError
    from medmerge.io.checkpoint import SafetensorsFile

    p = tmp_path / "model.safetensors"
    _raw_safetensors(p, header, data)
    with pytest.raises(CheckpointError, match=words) as exc:
        SafetensorsFile(p)
    assert str(p) in str(exc.value)


def test_duplicate_tensor_names_in_a_header_are_refused(tmp_path):
    from medmerge.errors import CheckpointError
    from medmerge.io.checkpoint import SafetensorsFile

    p = tmp_path / "model.safetensors"
    raw = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
    p.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(CheckpointError, match="tensor a is listed twice"):
        SafetensorsFile(p)


def test_a_header_the_library_accepts_is_read_in_any_key_order(tmp_path):
    """safetensors writes keys sorted by name, not by offset: the order of the byte ranges is what counts."""
    from medmerge.io.checkpoint import SafetensorsFile

    save_file({"z": torch.arange(3.0), "a": torch.arange(5.0)}, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    assert torch.equal(f.get("a"), torch.arange(5.0)) and torch.equal(f.get("z"), torch.arange(3.0))


def test_a_corrupt_parent_through_the_cli(work, fam, capsys):
    bad = Path(shutil.copytree(fam["m1"], work.parent / "bad"))
    raw = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw + b"\0" * 8)     # 8 bytes no tensor covers
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(fam["m0"], bad)))
    before = snapshot(work.parent)
    assert main(["merge", "recipe.yml", "out", "-q"]) == 2
    assert "the data section holds" in one_error_line(capsys.readouterr().err)
    assert main(["check", str(fam["m0"]), str(bad)]) == 2
    assert str(bad / "model.safetensors") in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before


@pytest.mark.parametrize("archs", [None, [], "LlamaForCausalLM"])
def test_parents_without_architectures(work, fam, capsys, archs):
    other = Path(shutil.copytree(fam["m1"], work.parent / "noarch"))
    cfg = json.loads((other / "config.json").read_text())
    if archs is None:
        del cfg["architectures"]
    else:
        cfg["architectures"] = archs
    (other / "config.json").write_text(json.dumps(cfg))
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(fam["m0"], other)))
    before = snapshot(work.parent)
    assert main(["merge", "recipe.yml", "out", "-q"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(other) in line and "'architectures'" in line
    for models in ([str(other)], [str(fam["m0"]), str(other)]):
        assert main(["check", *models]) == 2
        assert "'architectures'" in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before


def _without_tokenizer(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.glob("tokenizer*"):
        f.unlink()
    (dst / "special_tokens_map.json").unlink(missing_ok=True)
    return dst


def test_the_tokenizer_comes_from_the_parent_that_has_one(work, fam, capsys):
    bare = _without_tokenizer(fam["m0"], work.parent / "bare")
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(bare, fam["m1"])))
    assert main(["merge", "recipe.yml", "out", "-q"]) == 0
    assert (work / "out" / "tokenizer.json").read_bytes() == (fam["m1"] / "tokenizer.json").read_bytes()


def test_a_merge_without_any_tokenizer_is_refused(work, fam, capsys):
    a = _without_tokenizer(fam["m0"], work.parent / "bare0")
    b = _without_tokenizer(fam["m1"], work.parent / "bare1")
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(a, b)))
    before = snapshot(work.parent)
    assert main(["merge", "recipe.yml", "out", "-q"]) == 2
    assert "no parent has tokenizer files" in one_error_line(capsys.readouterr().err)
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(a, fam["m1"], tokenizer_source=str(a))))
    assert main(["merge", "recipe.yml", "out", "-q"]) == 2
    assert f"tokenizer_source '{a}'" in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == {**before, "work/recipe.yml": snapshot(work.parent)["work/recipe.yml"]}


# ------------------------------------------------------------------------------------------------
# the other commands that write
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "-1", "1.5", "nan", "x"])
def test_evaluate_limit_must_be_a_positive_count(work, fam, capsys, limit):
    assert main(["evaluate", str(fam["m0"]), "--out", "r.json", "--limit", limit]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Invalid value for '--limit'" in line and limit in line
    assert not (work / "r.json").exists()


def test_evaluate_out_never_replaces_a_file_medmerge_did_not_write(work, fam, capsys):
    before = snapshot(work.parent)
    for out, words in [("notes.txt", "already exists and medmerge did not write it"),
                       (str(fam["m0"] / "config.json"), "lies inside the model"),
                       (str(fam["m0"] / "report.json"), "lies inside the model"),
                       (".", "is a directory"), ("notes.txt/r.json", "is a file, not a directory")]:
        assert main(["evaluate", str(fam["m0"]), "--out", out, "--limit", "1"]) == 2, out
        assert words in one_error_line(capsys.readouterr().err), out
    assert snapshot(work.parent) == before


def test_evaluate_sweep_out_is_checked_before_any_work(work, fam, capsys):
    _sweep_spec(work, fam)
    (work / "reports").mkdir()
    (work / "reports" / "linear-0.5.json").write_text('{"mine": true}')
    before = snapshot(work.parent)
    assert main(["evaluate-sweep", "sweep.yml", "--out", "reports", "--limit", "1"]) == 2
    assert "reports/linear-0.5.json already exists and medmerge did not write it" in \
        one_error_line(capsys.readouterr().err)
    assert main(["evaluate-sweep", "sweep.yml", "--out", str(fam["m0"]), "--limit", "1"]) == 2
    assert f"lies inside the input {fam['m0']}" in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before


def test_validate_data_report_never_replaces_the_users_file(work, capsys):
    data = work / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"e{i}", "input": f"w{i}", "target": "w1"}) + "\n" for i in range(3)))
    (work / "summary.md").write_text("# my summary\n")
    before = snapshot(work)
    assert main(["validate-data", str(data), "--report", "summary.md"]) == 2
    assert "summary.md already exists and medmerge did not write it" in one_error_line(capsys.readouterr().err)
    assert snapshot(work) == before
    assert main(["validate-data", str(data), "--report", "report.md"]) == 0
    assert main(["validate-data", str(data), "--report", "report.md"]) == 0     # its own report: replaced
    assert (work / "report.md").read_text().startswith("## Data validation: ")


def test_schedule_never_replaces_a_crontab_file_it_did_not_write(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    mine = tmp_path / "crontab"
    mine.write_text("0 1 * * * backup.sh\n")
    assert main(["schedule", "--cron", "0 3 * * 1", "--crontab-out", str(mine)]) == 2
    assert "crontab file" in one_error_line(capsys.readouterr().err)
    assert main(["schedule", "--cron", "0 3 * * 1", "--systemd-out", str(mine)]) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err)
    assert mine.read_text() == "0 1 * * * backup.sh\n"


def test_demo_models_never_replaces_a_model_of_the_users(tmp_path, fam, capsys):
    shutil.copytree(fam["base"], tmp_path / "models" / "base")
    before = snapshot(tmp_path)
    assert main(["demo-models", str(tmp_path / "models"), "-q"]) == 2
    assert "demo model directory" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# two writers, one output directory
# ------------------------------------------------------------------------------------------------
def _race(fam, out: Path, monkeypatch, *, lock: bool = True, renameat2: bool = True):
    """Two merges into ``out``, both past every check before either renames (a barrier in the commit).
    Returns the two results (None, or the error) in thread order."""
    from contextlib import nullcontext

    from medmerge.io import atomic
    from medmerge.merge.engine import merge
    from medmerge.merge.recipe import parse_recipe

    barrier = threading.Barrier(2, timeout=60)
    real_commit = atomic._commit

    def commit_after_both_checked(*a, **kw):
        barrier.wait()
        return real_commit(*a, **kw)

    monkeypatch.setattr(atomic, "_commit", commit_after_both_checked)
    if not lock:
        monkeypatch.setattr(atomic, "_commit_lock", lambda final: nullcontext())
    if not renameat2:
        monkeypatch.setattr(atomic, "_RENAMEAT2", [None])
    results: list = [None, None]

    def writer(i: int, weight: float):
        recipe = parse_recipe({"merge_method": "linear", "models": [
            {"model": str(fam["m0"]), "parameters": {"weight": weight}},
            {"model": str(fam["m1"]), "parameters": {"weight": 1 - weight}}]})
        try:
            merge(recipe, out, quiet=True)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=writer, args=(i, w)) for i, w in enumerate((0.25, 0.75))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.mark.parametrize("lock,renameat2", [(True, True), (False, True), (True, False)],
                         ids=["lock+renameat2", "renameat2-alone", "lock-alone"])
def test_two_writers_to_one_new_directory(tmp_path, fam, monkeypatch, lock, renameat2):
    from medmerge.errors import OutputError

    out = tmp_path / "new" / "out"
    results = _race(fam, out, monkeypatch, lock=lock, renameat2=renameat2)
    refused = [r for r in results if r is not None]
    assert len(refused) == 1 and isinstance(refused[0], OutputError), results
    assert "appeared while medmerge was writing it" in str(refused[0])
    whole_checkpoint(out, fam)
    winner = results.index(None)
    want = (0.25, 0.75)[winner] * read(fam["m0"])["model.norm.weight"] + \
        (1 - (0.25, 0.75)[winner]) * read(fam["m1"])["model.norm.weight"]
    assert torch.allclose(read(out)["model.norm.weight"], want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"] and [p.name for p in out.parent.iterdir()] == ["out"]


def test_a_directory_appearing_before_the_rename_is_kept(tmp_path, fam, monkeypatch):
    """Someone else's directory created while the merge ran (after its check) is never replaced."""
    from medmerge.errors import OutputError
    from medmerge.io import atomic
    from medmerge.merge.engine import merge
    from medmerge.merge.recipe import parse_recipe

    out = tmp_path / "out"
    real_commit = atomic._commit

    def someone_creates_it(*a, **kw):
        out.mkdir()
        (out / "theirs.txt").write_text("theirs")
        return real_commit(*a, **kw)

    monkeypatch.setattr(atomic, "_commit", someone_creates_it)
    with pytest.raises(OutputError, match="appeared while medmerge was writing it"):
        merge(parse_recipe(linear(fam["m0"], fam["m1"])), out, quiet=True)
    assert snapshot(tmp_path) == {"out": "dir", "out/theirs.txt": hashlib.sha256(b"theirs").hexdigest()}


def test_a_candidate_computed_in_memory_is_checked_too(fam):
    """evaluate-sweep merges in memory: a non-finite candidate is an error there as well, never scored."""
    from medmerge.errors import NonFiniteOutputError
    from medmerge.merge.engine import merged_state_dict, open_parents, plan_merge
    from medmerge.merge.recipe import parse_recipe

    recipe = parse_recipe({"merge_method": "linear", "out_dtype": "float16", "parameters": {"normalize": False},
                           "models": [{"model": str(fam["m0"]), "parameters": {"weight": 1e6}},
                                      {"model": str(fam["m1"]), "parameters": {"weight": 1e6}}]})
    plan = plan_merge(recipe, open_parents(recipe.parent_refs))
    with pytest.raises(NonFiniteOutputError, match="merge for big gives Inf values in tensor model\\."):
        merged_state_dict(plan, name="big")


@pytest.mark.parametrize("index,words", [
    ("{not json", "is not a valid index"),
    ('{"metadata": {}}', "is not a valid index"),
    ('{"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}}', "must map tensor names to weight file"),
    ('{"weight_map": {"no.such.tensor": "model.safetensors"}}', "puts tensor no.such.tensor in model.safetensors"),
], ids=["not-json", "no-weight-map", "path-escape", "tensor-not-in-shard"])
def test_a_broken_index_of_a_sharded_parent(work, fam, capsys, index, words):
    other = Path(shutil.copytree(fam["m1"], work.parent / "sharded"))
    (other / "model.safetensors.index.json").write_text(index)
    (work / "recipe.yml").write_text(yaml.safe_dump(linear(fam["m0"], other)))
    assert main(["merge", "recipe.yml", "out", "-q"]) == 2
    assert words in one_error_line(capsys.readouterr().err)
    assert not (work / "out").exists()


@pytest.mark.parametrize("argv,option", [
    (["merge", "recipe.yml", "out", "--random-seed", "-1"], "--random-seed"),
    (["merge", "recipe.yml", "out", "--max-shard-size", "0"], "--max-shard-size"),
    (["merge", "recipe.yml", "out", "--chunk-size", "1e400GB"], "--chunk-size"),
    (["sweep", "recipe.yml", "out", "--max-shard-size", "-1MB"], "--max-shard-size"),
    (["evaluate", "m", "--out", "r.json", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "m", "--out", "r.json", "--num-fewshot", "-1"], "--num-fewshot"),
    (["evaluate", "m", "--out", "r.json", "--max-gen-toks", "0"], "--max-gen-toks"),
    (["sft-memory", "m", "--device-memory-gib", "-3"], "--device-memory-gib"),
    (["sft-memory", "m", "--device-memory-gib", "nan"], "--device-memory-gib"),
    (["sft-memory", "m", "--num-gpus", "1.5"], "--num-gpus"),
    (["server", "start", "--port", "70000"], "--port"),
    (["demo-models", "out", "--seed", "-2"], "--seed"),
])
def test_each_kind_of_argument_has_one_parser(work, capsys, argv, option):
    before = snapshot(work.parent)
    assert main(argv) == 2
    assert f"Invalid value for '{option}'" in one_error_line(capsys.readouterr().err)
    assert snapshot(work.parent) == before


_SLOW_SWEEP = """
import sys, time
from medmerge.io import writer
real = writer.StreamingCheckpointWriter.write
calls = []
def slow(self, name, t):
    calls.append(name)
    if len(calls) == 10:
        print("writing", flush=True)
    if len(calls) >= 10:
        time.sleep(0.5)
    return real(self, name, t)
writer.StreamingCheckpointWriter.write = slow
from medmerge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration   # a fresh interpreter importing torch: ~20 s on 2 busy cores
def test_sigterm_during_a_sweep_leaves_nothing_behind(work, fam):
    """A terminated sweep (SIGTERM, as a scheduler or `kill` sends) removes its temporary directories, the
    candidates and the OUT_DIR it created, like Ctrl-C does."""
    import signal
    import subprocess
    import sys

    _sweep_spec(work, fam)
    before = snapshot(work.parent)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_SWEEP, "sweep", "sweep.yml", "new/sweeps", "-q"],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert (work / "new" / "sweeps").is_dir()        # mid-write: its temporary directories are there
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted" in one_error_line(err)
    assert snapshot(work.parent) == before


def test_an_sft_checkpoint_with_its_record_stays_replaceable(tmp_path):
    """finetune adds medmerge_sft.json (the SFT's identity) after the checkpoint's marker was written; a rerun
    with other settings trains again with overwrite, so the record must not make the folder look foreign."""
    from medmerge.io.atomic import atomic_dir, check_output_dir, not_medmerge_reason

    out = tmp_path / "sft" / "clinical-8"
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    (out / "medmerge_sft.json").write_text('{"identity": "abc"}')
    assert not_medmerge_reason(out) is None
    check_output_dir(out, overwrite=True)
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "config.json").write_text('{"v": 2}')
    assert (out / "config.json").read_text() == '{"v": 2}' and not (out / "medmerge_sft.json").exists()
    (out / "notes.txt").write_text("mine")
    assert not_medmerge_reason(out) == "it holds notes.txt, which medmerge did not write"
