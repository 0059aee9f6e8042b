"""A real local MLflow tracking server, started and stopped by one command.

``start`` launches ``mlflow server`` as its own process session (so it outlives the command)
with a sqlite backend and a local artifact root by default (any backend URI the user gives,
e.g. ``postgresql://…`` with the ``postgres`` extra installed, works; a missing driver is one clear
error before anything starts), one worker (lean enough for 2 cores), bound to loopback, and
waits until ``/health`` answers. Its PID, URI and log live in the state directory, so ``stop``
ends exactly that process group and ``status`` reports it. ``--app-name basic-auth`` serves
MLflow's basic-auth app; clients then read MLFLOW_TRACKING_USERNAME/PASSWORD from the environment.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from medmerge.errors import MedmergeError
from medmerge.io.atomic import pid_alive

DEFAULT_STATE_DIR = Path(".medmerge") / "mlflow"


class ServerError(MedmergeError):
    """The tracking server cannot be started, reached or stopped."""


@dataclass
class ServerInfo:
    pid: int
    uri: str
    backend_store_uri: str
    artifacts_destination: str
    log: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def healthy(uri: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _state_file(state_dir: Path) -> Path:
    return Path(state_dir) / "server.json"


def _csrf_key(state_dir: Path) -> str:
    """The basic-auth app's CSRF secret: generated once per state directory (mode 0600), not a credential."""
    import secrets

    f = state_dir / "flask_secret_key"
    if not f.exists():
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return f.read_text().strip()


# The database driver each backend-store scheme needs in this Python, and the extra that installs it.
DRIVERS = {"postgresql": ("psycopg2", "postgres")}


def check_backend_driver(backend_store_uri: str | None) -> None:
    """Raise :class:`ServerError` naming the extra to install when the backend's driver is missing
    (otherwise the server would die with a traceback after it started)."""
    scheme, _, driver = (backend_store_uri or "").split(":", 1)[0].lower().partition("+")
    if scheme not in DRIVERS or driver not in ("", DRIVERS[scheme][0]):  # another driver named: not ours to check
        return
    module, extra = DRIVERS[scheme]
    try:
        __import__(module)
    except ImportError:
        raise ServerError(f"the {scheme} backend store needs the {module} driver: "
                          f"pip install 'medmerge[{extra}]'") from None


def status(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> ServerInfo | None:
    """The running server recorded in ``state_dir``, or None (a stale record is removed)."""
    f = _state_file(Path(state_dir))
    if not f.exists():
        return None
    info = ServerInfo(**json.loads(f.read_text()))
    if pid_alive(info.pid):
        return info
    f.unlink(missing_ok=True)
    return None


def start(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, host: str = "127.0.0.1", port: int | None = 5000,
          backend_store_uri: str | None = None, artifacts_destination: str | None = None,
          app_name: str | None = None, timeout: float = 300.0) -> ServerInfo:
    """Start the server (or return the one already running from ``state_dir``). ``timeout`` is generous: the
    first start against an empty PostgreSQL database runs all of MLflow's schema migrations."""
    state_dir = Path(state_dir).resolve()
    running = status(state_dir)
    if running:
        return running
    check_backend_driver(backend_store_uri)
    if app_name == "basic-auth" and not (state_dir / "basic_auth.db").exists() \
            and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise ServerError("the basic-auth app needs an admin password on first start: set MLFLOW_AUTH_ADMIN_PASSWORD "
                          "in the environment (never in a file in the repository); clients then set "
                          "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            raise ServerError(f"port {port} on {host} is already in use; pass --port or stop what listens there")
    backend = backend_store_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
    artifacts = artifacts_destination or str(state_dir / "artifacts")
    if "://" not in artifacts:  # a local path: the server runs in state_dir, so make it the caller's path
        artifacts = str(Path(artifacts).resolve())
    uri = f"http://{host}:{port}"
    log = state_dir / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", artifacts, "--serve-artifacts",
           "--workers", "1"]
    if app_name:
        cmd += ["--app-name", app_name]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")
    # MLflow 3's job execution (GenAI online scoring, trace archival) starts eight huey consumer processes
    # beside the server: about 250 MB and 4 s of CPU each at start, then a poll a minute. medmerge uses none
    # of those jobs; a user who does sets MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if app_name == "basic-auth" and not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = _csrf_key(state_dir)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=state_dir)
    info = ServerInfo(pid=proc.pid, uri=uri, backend_store_uri=backend, artifacts_destination=artifacts, log=str(log))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise ServerError(f"mlflow server exited with code {proc.returncode}; last log lines:\n{tail}")
        if healthy(uri):
            _state_file(state_dir).write_text(info.to_json())
            return info
        time.sleep(0.5)
    _terminate(proc.pid)
    raise ServerError(f"mlflow server did not answer on {uri}/health within {timeout:.0f} s (log: {log})")


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Collect ``pid``'s exit status when it is our child (a zombie would still answer ``kill(pid, 0)``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:   # not our child, or already collected
            return
        time.sleep(0.05)


def _terminate(pid: int, grace: float = 15.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:   # reap it first when it is our child: pid_alive counts an unreaped zombie as gone
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30.0   # a loaded machine can take seconds to tear a killed process down
    while time.monotonic() < deadline:  # reap it when it is our child, so no zombie is left that looks alive
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not pid_alive(pid):
                return
        time.sleep(0.1)


def stop(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> ServerInfo | None:
    """Stop the server recorded in ``state_dir`` (its whole process group); None if none ran."""
    info = status(state_dir)
    if info is None:
        return None
    _terminate(info.pid)
    _state_file(Path(state_dir)).unlink(missing_ok=True)
    return info
