"""scripts/gpu_check.sh: refuses without CUDA, and its CPU-side setup (and, slow, its phases on a tiny model)
runs on a CPU. The GPU figures themselves come from a GPU session, never from this suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(Path.home())})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_refuses_without_cuda():
    out = run("--out", "unused")
    assert out.returncode == 2
    assert out.stderr.startswith("gpu_check: no CUDA device") and "--device cpu --tiny" in out.stderr


def test_dry_run_builds_the_pair_on_a_cpu(tmp_path):
    out = run("--device", "cpu", "--tiny", "--dry-run", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "random Llama pair" in out.stdout and "dry run" in out.stdout
    for name in ("a", "b"):
        cfg = json.loads((tmp_path / "models" / name / "config.json").read_text())
        assert cfg["dtype"] == "bfloat16" and cfg["num_hidden_layers"] == 2


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_cpu_run_prints_every_figure(tmp_path):
    out = run("--device", "cpu", "--tiny", "--out", str(tmp_path), "--ratios", "2", "--limit", "1", "--steps", "1",
              "--generations", "2", "--max-new-tokens", "4", "--workers", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    for line in ("evaluation ", "SFT ", "generation ", "peak GPU memory"):
        assert any(x.startswith(line) for x in out.stdout.splitlines()), line
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["evaluate"]["candidates"] == 2 and report["evaluate"]["tokens_per_second"] > 0
    assert report["sft"]["steps"] == 1 and report["sft"]["samples_per_second"] > 0
    assert report["generate"]["sequences"] == 2 and report["evaluate"]["dtype"] == "float32"  # auto on a CPU
    # the sweep again on 2 local workers (what 2 GPUs get by default)
    w = report["evaluate_workers"]
    assert (w["workers"], w["candidates"]) == (2, 2) and w["seconds"] > 0 and w["seconds_per_candidate"] > 0
    assert any(x.startswith("evaluation on 2 workers: ") for x in out.stdout.splitlines())
