"""Checkpoint I/O: the reader agrees with safetensors, the writer's files load anywhere, dirs are atomic."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from medmerge.errors import CheckpointError, OutputError
from medmerge.io.atomic import atomic_dir
from medmerge.io.checkpoint import SafetensorsFile
from medmerge.io.writer import StreamingCheckpointWriter, TensorSpec, parse_size


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.f32": torch.randn(7, 5, generator=g),
        "b.bf16": torch.randn(3, 4, 2, generator=g).to(torch.bfloat16),
        "c.f16": torch.randn(9, generator=g).to(torch.float16),
        "d.i64": torch.arange(6).reshape(2, 3),
        "e.scalar": torch.tensor(3.5),
        "f.empty": torch.zeros(0, 4),
    }


def test_reader_matches_safetensors(tmp_path, tensors):
    save_file(tensors, str(tmp_path / "m.safetensors"))
    f = SafetensorsFile(tmp_path / "m.safetensors")
    assert sorted(f.keys()) == sorted(tensors)
    for k, v in tensors.items():
        got = f.get(k)
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v), k
    assert torch.equal(f.get_rows("a.f32", 2, 5), tensors["a.f32"][2:5])
    assert torch.equal(f.get_rows("b.bf16", 1, 3), tensors["b.bf16"][1:3])


def test_writer_output_is_read_by_safetensors(tmp_path, tensors):
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    w = StreamingCheckpointWriter(tmp_path, specs, max_shard_bytes=10**9)
    for k, v in tensors.items():
        if k == "a.f32":  # row blocks land contiguously
            w.write(k, v[:3])
            w.write(k, v[3:])
        else:
            w.write(k, v)
    w.close()
    back = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


def test_writer_refuses_wrong_order_dtype_and_incomplete(tmp_path):
    specs = [TensorSpec("x", torch.float32, (2, 2)), TensorSpec("y", torch.float32, (2,))]
    w = StreamingCheckpointWriter(tmp_path, specs)
    with pytest.raises(ValueError, match="out of order"):
        w.write("y", torch.zeros(2))
    with pytest.raises(ValueError, match="planned"):
        w.write("x", torch.zeros(2, 2, dtype=torch.float16))
    w.write("x", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="never written"):
        w.close()
    w.abort()


@pytest.mark.parametrize("damage", ["truncate", "garbage_header", "huge_header"])
def test_damaged_files_are_named(tmp_path, tensors, damage):
    p = tmp_path / "m.safetensors"
    save_file(tensors, str(p))
    raw = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(raw[: len(raw) - 10])
    elif damage == "garbage_header":
        p.write_bytes(raw[:8] + b"\xff" * (len(raw) - 8))
    else:
        p.write_bytes((10**12).to_bytes(8, "little") + raw[8:])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        SafetensorsFile(p)


def test_atomic_dir_renames_on_success_only(tmp_path):
    with atomic_dir(tmp_path / "ok") as t:
        (t / "f").write_text("x")
    assert (tmp_path / "ok" / "f").read_text() == "x"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(tmp_path / "bad") as t:
            (t / "f").write_text("x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok"]
    with pytest.raises(OutputError, match="already exists"):
        with atomic_dir(tmp_path / "ok"):
            pass


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("64MiB") == 64 * 2**20 and parse_size(123) == 123


def test_pid_alive_counts_a_zombie_as_dead():
    """A server child killed but not yet reaped is a zombie: `kill -0` still succeeds, yet it is gone."""
    import os
    import subprocess
    import time

    from medmerge.io.atomic import pid_alive

    child = subprocess.Popen(["sleep", "0.1"])
    time.sleep(1.0)                      # exited, not reaped: a zombie
    os.kill(child.pid, 0)                # the signal test alone would call it alive
    assert not pid_alive(child.pid)
    child.wait()
    assert pid_alive(os.getpid())
