"""The fast suite's live MLflow server: `medmerge server start` for real (sqlite store, served artifacts) on a
free loopback port, one run logged and one tiny version registered through the client a pipeline uses, then
stopped by its PID. Not `slow`: `make test-fast` exercises a real server too."""

from __future__ import annotations

import json
import os
import time

import pytest
from mlflow_api import api

from medmerge.cli import main
from medmerge.tracking.server import healthy, status


def test_live_server_logs_registers_and_stops_by_pid(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    assert main(["server", "start", "--state-dir", str(tmp_path), "--port", "0"]) == 0
    info = status(tmp_path)
    assert info is not None and info.uri.startswith("http://127.0.0.1:") and not info.uri.endswith(":5000")
    assert capsys.readouterr().out.strip() == f"mlflow server running at {info.uri} (pid {info.pid}; log {info.log})"
    try:
        c = MlflowClient(info.uri)
        exp = c.create_experiment("fast-suite")
        run = c.create_run(exp, run_name="linear-0.3")
        c.log_metric(run.info.run_id, "medical_avg", 0.43)
        c.log_param(run.info.run_id, "merge_method", "linear")
        weights = tmp_path / "tiny" / "weights.json"
        weights.parent.mkdir()
        weights.write_text(json.dumps({"w": [0.25, 0.75]}))
        c.log_artifact(run.info.run_id, str(weights), "checkpoint")
        c.set_terminated(run.info.run_id)
        c.create_registered_model("fast-tiny")
        mv = c.create_model_version("fast-tiny", f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id,
                                    tags={"medical_avg": "0.43"})
        assert mv.version == "1"
        # read back over the REST API, as another process would
        got = api(info.uri, "registered-models/get", name="fast-tiny")["registered_model"]
        assert [v["version"] for v in got["latest_versions"]] == ["1"]
        assert got["latest_versions"][0]["run_id"] == run.info.run_id
        metrics = api(info.uri, "runs/get", run_id=run.info.run_id)["run"]["data"]["metrics"]
        assert [(m["key"], m["value"]) for m in metrics] == [("medical_avg", 0.43)]
        local = c.download_artifacts(run.info.run_id, "checkpoint/weights.json", str(tmp_path / "dl"))
        assert json.loads(open(local).read()) == {"w": [0.25, 0.75]}
    finally:
        capsys.readouterr()
        assert main(["server", "stop", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"stopped mlflow server {info.uri} (pid {info.pid})"
    with pytest.raises(ProcessLookupError, match="No such process"):  # stopped by its PID: the process is gone
        os.kill(info.pid, 0)
    assert not healthy(info.uri) and status(tmp_path) is None
    print(f"live server: start, log, register, stop in {time.monotonic() - t0:.1f} s")
