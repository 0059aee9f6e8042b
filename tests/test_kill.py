"""``kill -9`` of ``medmerge merge`` and ``medmerge sweep`` while they write: the real console script in a
process of its own, SIGKILLed once it has written part of its output (a ``sitecustomize`` shim on its
PYTHONPATH holds the writer still after a few tensors and says so in a marker file: tiny checkpoints are
otherwise written faster than a test can aim). Nothing left behind looks whole, and the rerun completes.
(pipelines killed mid-step: tests/test_faults.py)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from factory import make_family, read
from mk import mergekit_merge

from medmerge.io.atomic import MARKER, TMP_PREFIX

pytestmark = pytest.mark.integration   # faults: the second tier

MEDMERGE = str(Path(sys.executable).parent / "medmerge")
HOLD_AFTER = 5   # tensors written (by every writer together) before the shim holds the writer

SHIM = f'''
import os, sys, time
from pathlib import Path

marker = os.environ.get("MEDMERGE_TEST_HOLD_MARKER")
if marker:
    from medmerge.io import writer

    real = writer.StreamingCheckpointWriter.write
    count = [0]

    def holding_write(self, name, tensor):
        real(self, name, tensor)
        count[0] += 1
        if count[0] == {HOLD_AFTER}:
            self._file.flush()
            Path(marker).write_text(f"{{os.getpid()}} {{self.out_dir}} {{name}}")
            time.sleep(600)

    writer.StreamingCheckpointWriter.write = holding_write
'''


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_children=2)


def killed_mid_write(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Start ``medmerge *args`` with the holding shim, SIGKILL it once it holds; (its pid, what it was writing)."""
    shim, marker = tmp_path / "shim", tmp_path / "holding"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    env = dict(os.environ, MEDMERGE_TEST_HOLD_MARKER=str(marker),
               PYTHONPATH=os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")])))
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([MEDMERGE, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 300
    try:
        while not marker.exists():
            assert proc.poll() is None, f"medmerge exited ({proc.returncode}) before writing:\n{log.read_text()}"
            assert time.monotonic() < deadline, "medmerge did not start writing within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    pid, out_dir, _ = marker.read_text().split(" ", 2)
    assert int(pid) == proc.pid
    return proc.pid, out_dir


def assert_nothing_looks_whole(parent: Path, finals: list[Path], pid: int, writing: Path) -> list[Path]:
    """No final output exists; what the killed process left is its temporary directories only (named as
    such, with its pid), none holding a config.json or medmerge's output marker, so that neither
    transformers nor medmerge takes one for a checkpoint; the weight file it was writing does not load.
    Returns those directories."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    assert not any(f.exists() for f in finals), [f for f in finals if f.exists()]
    left = sorted(parent.glob(TMP_PREFIX + "*"))
    assert writing in left and all(f".{pid}." in p.name for p in left), left
    for d in left:
        assert not (d / "config.json").exists() and not (d / MARKER).exists(), sorted(os.listdir(d))
    with pytest.raises(SafetensorError, match="incomplete metadata|not fully covered|invalid"):
        load_file(str(writing / "model.safetensors"))
    return left


def test_kill_9_during_merge_write_leaves_nothing_whole_and_the_rerun_completes(fam, tmp_path):
    recipe = {"merge_method": "linear", "models": [{"model": str(fam["m0"]), "parameters": {"weight": 0.3}},
                                                   {"model": str(fam["m1"]), "parameters": {"weight": 0.7}}]}
    cfg = tmp_path / "recipe.yml"
    cfg.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "work" / "merged"
    pid, writing = killed_mid_write(tmp_path, "merge", str(cfg), str(out), "-q")
    assert len(assert_nothing_looks_whole(out.parent, [out], pid, Path(writing))) == 1

    rerun = subprocess.run([MEDMERGE, "merge", str(cfg), str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    mine, theirs = read(out), read(mergekit_merge(recipe, tmp_path / "mergekit"))
    assert sorted(mine) == sorted(theirs) and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert not list(out.parent.glob(TMP_PREFIX + "*"))   # the dead process's temporary directory is gone


def test_kill_9_during_sweep_write_leaves_nothing_whole_and_the_rerun_completes(fam, tmp_path):
    ratios = [0.0, 0.5, 1.0]
    spec = tmp_path / "sweep.yml"
    spec.write_text(yaml.safe_dump({"clinical": str(fam["m0"]), "instruct": str(fam["m1"]), "methods": ["linear"],
                                    "ratios": ratios}))
    out = tmp_path / "swept"
    names = [f"linear-{r}" for r in ratios]
    pid, writing = killed_mid_write(tmp_path, "sweep", str(spec), str(out), "-q")
    left = assert_nothing_looks_whole(out, [out / n for n in names], pid, Path(writing))
    assert len(left) == len(names)   # every candidate was being written at once

    rerun = subprocess.run([MEDMERGE, "sweep", str(spec), str(out), "-q"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == names   # the dead process's temporary directories are gone
    m0, m1 = read(fam["m0"]), read(fam["m1"])
    for r, name in zip(ratios, names):   # each candidate whole: its tensors, computed here
        got = read(out / name)
        assert sorted(got) == sorted(m0)
        assert all(torch.allclose(got[k], (1 - r) * m0[k] + r * m1[k], rtol=0, atol=1e-6) for k in m0), name
