"""A team's tracking server: MLflow on a real PostgreSQL (Debian's `postgresql`, a throwaway cluster
in a temp dir on a free loopback port), artifacts in a directory of the user's choosing, and a
pipeline that logs to whichever server it is pointed at.

`make install` installs Debian's postgresql as root (like chromium); a test never installs anything.
Without it the Postgres test is skipped saying why (a failure under CI=true).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from factory import DEMO_EVAL, require
from mlflow_api import api, api_post

from medmerge.cli import main
from medmerge.tracking.server import free_port, status, stop

# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------

def test_missing_driver_is_one_line_naming_the_extra_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` now fails as if not installed
    state = tmp_path / "state"
    rc = main(["server", "start", "--state-dir", str(state), "--port", "0",
               "--backend-store-uri", "postgresql://mlflow:secret@127.0.0.1:5432/mlflow"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "medmerge: error: the postgresql backend store needs the psycopg2 driver: pip install 'medmerge[postgres]'"]
    assert not state.exists()  # nothing started, nothing written


def test_missing_driver_through_the_console_script(tmp_path):
    """The same from a fresh interpreter, with the driver hidden by a sitecustomize shim."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['psycopg2'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "medmerge.cli", "server", "start", "--state-dir",
                           str(tmp_path / "state"), "--port", "0", "--backend-store-uri",
                           "postgresql+psycopg2://mlflow@127.0.0.1/mlflow"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("pip install 'medmerge[postgres]'")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "state").exists()


# ---------------------------------------------------------------------------------------------
# a real PostgreSQL
# ---------------------------------------------------------------------------------------------

def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of its own (temp dir, free loopback port) with a user and a database for MLflow;
    yields the SQLAlchemy URI MLflow takes. Stopped and removed afterwards."""
    bindir = _pg_bindir()
    if bindir is None:   # installed by `make install` (as root), never from here
        reason = "Debian's postgresql is not installed (as root: make install, or apt-get install postgresql)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason}: CI must run the Postgres test", pytrace=False)
        pytest.skip(reason)
    psycopg2 = require("psycopg2", "pip install 'medmerge[postgres]'")

    root = Path(tempfile.mkdtemp(prefix="medmerge-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the cluster belongs to the postgres user
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(*cmd: str) -> None:
        out = subprocess.run(as_user + [str(bindir / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{cmd[0]} failed:\n{out.stdout}\n{out.stderr}"

    # local (socket) connections trust the superuser; TCP needs the password, as on a real server
    pg("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
       "--encoding=UTF8", "--no-instructions")
    pg("pg_ctl", "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
       "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        con = psycopg2.connect(host=str(root), port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("CREATE USER mlflow WITH PASSWORD 'test-only-pg'")
            cur.execute("CREATE DATABASE mlflow OWNER mlflow")
        con.close()
        yield f"postgresql://mlflow:test-only-pg@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _runs(uri: str, experiment: str) -> list[dict]:
    exp = api(uri, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    return api_post(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])


def _is_nested(run: dict) -> bool:
    return any(t["key"] == "mlflow.parentRunId" for t in run["data"].get("tags", []))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1800)  # two pipeline runs and a first start on an empty Postgres (migrations)
def test_switching_to_a_postgres_server_logs_there_and_reuses_the_computation(
        postgres, demo_models, mlflow_server, demo_eval_cache, tmp_path, monkeypatch, capsys):
    from zenml.enums import ExecutionStatus as S

    from pipelines.merge_search import run

    # the local sqlite server (the session's), and a shared one on PostgreSQL with its own artifact root
    pg_state = tmp_path / "pg-server"
    shared_artifacts = tmp_path / "team-artifacts"
    old = mlflow_server
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(demo_eval_cache))   # the demo sweep's scores, computed once
    assert main(["server", "start", "--state-dir", str(pg_state), "--port", "0", "--backend-store-uri", postgres,
                 "--artifacts-destination", str(shared_artifacts)]) == 0
    new = status(pg_state)
    try:
        assert new.backend_store_uri == postgres and new.artifacts_destination == str(shared_artifacts)
        sweep = tmp_path / "sweep.yml"
        sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                         "instruct": str(demo_models["instruct"]),
                                         "methods": ["linear"], "ratios": [0.0, 0.5, 1.0]}))
        model, experiment = "pg-model", "pg-merge-search"
        cfg = tmp_path / "run.yaml"  # no tracking_uri: the environment says where, as a user switching servers does
        cfg.write_text(yaml.safe_dump({"parameters": {"config": {
            "sweep": str(sweep), **DEMO_EVAL, "output_dir": str(tmp_path / "selected"),
            "registered_model": model, "experiment": experiment}}}))

        # 1. against the sqlite server
        monkeypatch.setenv("MLFLOW_TRACKING_URI", old.uri)
        first = run(str(cfg), promote_knee=True)
        assert first["results"].tracking_uri == old.uri
        old_runs = {r["info"]["run_id"] for r in _runs(old.uri, experiment)}
        old_versions = api(old.uri, "model-versions/search", filter=f"name='{model}'")["model_versions"]
        assert len(old_runs) == 1 + 3 and len(old_versions) == len(first["versions"])
        checkpoint_mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "selected").rglob("*") if p.is_file()}
        capsys.readouterr()

        # 2. the same config, MLFLOW_TRACKING_URI now names the Postgres-backed server
        monkeypatch.setenv("MLFLOW_TRACKING_URI", new.uri)
        second = run(str(cfg), promote_knee=True)
        printed = capsys.readouterr().out

        # merges and evaluations came from ZenML's cache; exactly the MLflow steps ran again
        from zenml.client import Client

        steps = {n: s.status for n, s in Client().get_pipeline("merge_search").last_run.steps.items()}
        mlflow_steps = {"log_search", "register_selected", "promote"} & set(steps)
        assert {"log_search", "register_selected"} <= mlflow_steps
        assert steps["check_parents"] == S.COMPLETED  # never cached: it hashes the parents
        assert all(steps[n] == S.COMPLETED for n in mlflow_steps), steps
        assert all(s == S.CACHED for n, s in steps.items() if n not in mlflow_steps | {"check_parents"}), steps
        assert {"evaluate_candidates", "select_frontier", "write_selected"} <= set(steps)
        assert {p: p.stat().st_mtime_ns for p in checkpoint_mtimes} == checkpoint_mtimes  # nothing rewritten
        assert second["frontier"].near == first["frontier"].near

        # the Postgres server holds the parent run, the nested runs, the versions and the @staging alias
        runs = _runs(new.uri, experiment)
        parents = [r for r in runs if not _is_nested(r)]
        nested = [r for r in runs if _is_nested(r)]
        assert [r["info"]["status"] for r in parents] == ["FINISHED"]
        assert sorted(r["info"]["run_name"] for r in nested) == ["linear-0.0", "linear-0.5", "linear-1.0"]
        pid = parents[0]["info"]["run_id"]
        assert {f["path"] for f in api(new.uri, "artifacts/list", run_id=pid, path="figures")["files"]} >= {
            "figures/frontier.png", "figures/trajectories.png"}
        mvs = api(new.uri, "model-versions/search", filter=f"name='{model}'")["model_versions"]
        assert {mv["version"] for mv in mvs} == set(second["versions"].values())
        assert all(mv["run_id"] in {r["info"]["run_id"] for r in nested} for mv in mvs)
        knee = second["frontier"].knee
        staged = api(new.uri, "registered-models/alias", name=model, alias="staging")["model_version"]
        assert staged["version"] == second["versions"][knee]
        assert {t["key"]: t["value"] for t in staged["tags"]}["candidate"] == knee

        # ... in PostgreSQL itself, not some other store
        import psycopg2

        with psycopg2.connect(postgres) as con, con.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                        "WHERE e.name = %s", (experiment,))
            assert cur.fetchone()[0] == 4
            cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'staging'", (model,))
            assert cur.fetchall() == [(int(second["versions"][knee]),)]

        # the checkpoints' artifacts landed in the chosen artifact root, not the state dir's default
        assert not (pg_state / "artifacts").exists()
        assert list(shared_artifacts.rglob(f"{pid}/artifacts/figures/frontier.png"))
        weights = list(shared_artifacts.rglob("*.safetensors"))  # the registered checkpoints' weights
        assert len(weights) >= len(mvs) and all(w.stat().st_size > 10_000 for w in weights), weights

        # the sqlite server got nothing from the second run
        assert {r["info"]["run_id"] for r in _runs(old.uri, experiment)} == old_runs
        assert api(old.uri, "model-versions/search", filter=f"name='{model}'")["model_versions"] == old_versions

        # the printed links point at the server that was used
        assert f"MLflow run:        {new.uri}/#/experiments/" in printed and pid in printed
        assert old.uri not in printed
    finally:
        stop(pg_state)


# ---------------------------------------------------------------------------------------------
# a server that is gone while the user points at another
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_points_elsewhere", [True, False])
def test_dead_server_advice_depends_on_where_the_user_points(monkeypatch, env_points_elsewhere):
    from medmerge.tracking import registry

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    if env_points_elsewhere:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with pytest.raises(registry.RegistryError, match="is not reachable") as exc:
        registry.client(dead).search_experiments()
    msg = str(exc.value)
    assert msg.startswith(f"MLflow tracking server {dead} is not reachable")
    if env_points_elsewhere:
        assert "MLFLOW_TRACKING_URI names another server, http://127.0.0.1:1" in msg and "start it again" not in msg
    else:
        assert "start it again (medmerge server start) and rerun" in msg
