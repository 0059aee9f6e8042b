"""The local MLflow tracking server: started for real on a free loopback port, stopped by its PID."""

from __future__ import annotations

import os

import pytest

from medmerge.cli import main
from medmerge.tracking.server import ServerError, healthy, start, status, stop


@pytest.mark.slow
def test_start_status_stop(tmp_path, capsys):
    assert main(["server", "start", "--state-dir", str(tmp_path), "--port", "0"]) == 0
    info = status(tmp_path)
    assert info is not None and healthy(info.uri)
    assert (tmp_path / "mlflow.db").exists()
    # starting again reuses the running server
    assert start(tmp_path, port=0).pid == info.pid
    # a client logs a run to it
    import mlflow

    mlflow.set_tracking_uri(info.uri)
    mlflow.set_experiment("server-test")
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.5)
    assert mlflow.get_run(run.info.run_id).data.metrics["x"] == 1.5
    assert main(["server", "status", "--state-dir", str(tmp_path)]) == 0
    assert main(["server", "stop", "--state-dir", str(tmp_path)]) == 0
    assert not healthy(info.uri)
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)
    assert main(["server", "status", "--state-dir", str(tmp_path)]) == 1
    assert stop(tmp_path) is None


def test_port_in_use_is_refused(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            start(tmp_path, port=port)
    assert status(tmp_path) is None


def test_bad_backend_uri_reports_the_log(tmp_path):
    with pytest.raises(ServerError, match="mlflow server exited"):
        start(tmp_path, port=0, backend_store_uri="nosuchscheme://x", timeout=60)
    assert status(tmp_path) is None
