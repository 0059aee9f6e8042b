"""zenml_config/register_local_stack.sh registers a stack whose tracker and registry are our MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


def test_register_local_stack(mlflow_server):
    info = mlflow_server
    zenml = str(Path(sys.executable).parent / "zenml")
    env = dict(os.environ, PYTHON=sys.executable)
    try:
        out = subprocess.run(["bash", str(ROOT / "zenml_config" / "register_local_stack.sh"), info.uri], env=env,
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"active stack: medmerge_local (MLflow at {info.uri})" in out.stdout
        described = subprocess.run([zenml, "stack", "describe", "medmerge_local"], env=env, capture_output=True,
                                   text=True)
        text = described.stdout + described.stderr
        assert "medmerge_mlflow_tracker" in text and "medmerge_mlflow_registry" in text
    finally:
        subprocess.run([zenml, "stack", "set", "default"], env=env, capture_output=True)


def test_no_server_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, MEDMERGE_SERVER_STATE=str(tmp_path / "none"))
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(["bash", str(ROOT / "zenml_config" / "register_local_stack.sh")], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "no MLflow server" in out.stderr
