"""The local MLflow tracking server: started for real on a free loopback port, stopped by its PID."""

from __future__ import annotations

import os
import time

import pytest

from medmerge.cli import main
from medmerge.io.atomic import pid_alive
from medmerge.tracking.server import ServerError, healthy, start, status, stop


def _descendants(pid: int) -> list[str]:
    """The command lines of ``pid``'s descendant processes (from /proc)."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    cmdlines: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdlines[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(cmdlines.get(p, ""))
        todo += children.get(p, [])
    return out


def test_job_execution_is_off_unless_the_user_turns_it_on(tmp_path, monkeypatch):
    """The server's environment turns MLflow's job execution off by default and keeps a user's own value."""
    import subprocess

    seen = []

    class Exited:
        pid, returncode = 999999, 1

        def __init__(self, cmd, env, **kwargs):
            seen.append(env)

        def poll(self):
            return 1

    monkeypatch.setattr(subprocess, "Popen", Exited)
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    with pytest.raises(ServerError, match="mlflow server exited with code 1"):
        start(tmp_path, port=0)
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    with pytest.raises(ServerError, match="mlflow server exited with code 1"):
        start(tmp_path, port=0)
    assert [env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] for env in seen] == ["false", "true"]


@pytest.mark.slow
@pytest.mark.integration
def test_start_status_stop(tmp_path, capsys):
    assert main(["server", "start", "--state-dir", str(tmp_path), "--port", "0"]) == 0
    info = status(tmp_path)
    assert info is not None and healthy(info.uri)
    assert (tmp_path / "mlflow.db").exists()
    # MLflow's job execution is off: no huey consumer beside the server (eight of them, 2 GB, when it is on)
    assert not [cmd for cmd in _descendants(info.pid) if "huey" in cmd]
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
    deadline = time.monotonic() + 10   # gone (and reaped) within seconds, even on a loaded machine
    while time.monotonic() < deadline and pid_alive(info.pid):
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError, match="No such process"):
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


def test_basic_auth_needs_the_admin_password_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    assert main(["server", "start", "--state-dir", str(tmp_path), "--port", "0", "--basic-auth"]) == 2
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in capsys.readouterr().err
    assert status(tmp_path) is None


@pytest.mark.slow
@pytest.mark.integration
def test_basic_auth_server_and_credentials_from_the_environment(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from medmerge.tracking import registry

    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "test-only-Pa55word")
    info = start(tmp_path, port=0, app_name="basic-auth")
    try:
        url = f"{info.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        with pytest.raises(urllib.error.HTTPError, match="HTTP Error 401") as exc:  # anonymous: refused
            urllib.request.urlopen(url, timeout=30)
        assert exc.value.code == 401
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="401|[Uu]nauthori[sz]ed|credentials") as anonymous:
            registry.client(info.uri).create_experiment("anonymous")
        assert anonymous.value.get_http_status_code() == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # the client reads these, nothing else
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "test-only-Pa55word")
        exp = registry.client(info.uri).create_experiment("with-credentials")
        assert registry.client(info.uri).get_experiment(exp).name == "with-credentials"
        req = urllib.request.Request(url, headers={"Authorization": "Basic YWRtaW46d3Jvbmc="})  # admin:wrong
        with pytest.raises(urllib.error.HTTPError, match="HTTP Error 401") as wrong:
            urllib.request.urlopen(req, timeout=30)
        assert wrong.value.code == 401
    finally:
        stop(tmp_path)
    assert (tmp_path / "flask_secret_key").stat().st_mode & 0o077 == 0  # the CSRF key is private to its owner
