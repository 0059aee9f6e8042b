"""Cost accounting: each measured step logs wall time and peak RSS (and peak GPU memory on a GPU) to its
MLflow run, with MLflow's own system-metrics series; the finetune run's cost.md puts the merge search
against each SFT run."""

from __future__ import annotations

import time

import pytest

from medmerge.runtime import cost
from medmerge.runtime.cost import CostRow, cost_table, measured


@pytest.fixture(scope="module")
def mlflow_client(tmp_path_factory):
    """One sqlite store for the module (creating one runs MLflow's migrations: seconds)."""
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("cost", artifact_location=str(tmp / "artifacts"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDMERGE_SYSTEM_METRICS_INTERVAL", "0.2")
        yield uri, c, exp


def test_measured_steps_log_wall_time_peak_rss_and_system_metrics(mlflow_client):
    uri, c, exp = mlflow_client
    parent = c.create_run(exp, run_name="parent").info.run_id

    @measured("read")
    def before_the_run():        # no run yet: its figures wait for the next run
        time.sleep(0.05)

    @measured("grow", run=lambda a: (uri, a["run_id"]))
    def grow(run_id: str, mib: int):
        block = bytearray(mib * 2 ** 20)
        block[::4096] = b"x" * len(block[::4096])   # touch every page: resident
        time.sleep(0.6)                             # long enough for a system-metrics sample
        return len(block)

    @measured("opens")
    def opens_its_run(child: str):
        cost.attach(uri, child, parent)             # the step's own run; earlier figures go to the parent

    before_the_run()
    child = c.create_run(exp, run_name="child", tags={"mlflow.parentRunId": parent}).info.run_id
    opens_its_run(child)
    grow(child, 300)
    small = cost.begin("small")
    cost.end(small)
    m = c.get_run(child).data.metrics
    assert m["cost.grow.wall_seconds"] >= 0.6
    assert m["cost.grow.peak_rss_mib"] >= 300 + small.peak_rss_bytes / 2 ** 20 - 50   # the block, on top of the rest
    assert small.peak_rss_bytes < m["cost.grow.peak_rss_mib"] * 2 ** 20 - 250 * 2 ** 20  # the mark was reset after
    assert "cost.grow.peak_gpu_mib" not in m                          # no GPU here
    assert any(k.startswith("system/") for k in m), sorted(m)         # MLflow's SystemMetricsMonitor series
    assert "cost.opens.wall_seconds" in m
    assert c.get_run(parent).data.metrics["cost.read.wall_seconds"] >= 0.05


def test_cost_table_puts_the_sweep_against_each_sft_run():
    sweep = CostRow(what="merge search", detail="22 candidates", wall_seconds=100.0, peak_rss_mib=900.0)
    sft = [CostRow(what="SFT clinical-8", detail="30 steps", wall_seconds=50.0, peak_rss_mib=1200.0),
           CostRow(what="SFT clinical-full", detail="60 steps", wall_seconds=250.0, peak_gpu_mib=30000.0)]
    text = cost_table(sweep, sft)
    lines = text.splitlines()
    assert lines[0] == "# Cost: merge vs SFT"
    assert "| merge search | 22 candidates | 100.0 | 1.00 | 900 | - |" in lines
    assert "| SFT clinical-8 | 30 steps | 50.0 | 0.50 | 1200 | - |" in lines
    assert "| SFT clinical-full | 60 steps | 250.0 | 2.50 | - | 30000 |" in lines
    assert lines[-1] == "All 2 SFT runs: 300.0 s, 3.00 x the merge search."
    alone = cost_table(None, sft[:1])
    assert "No merge-search run is linked" in alone and "| SFT clinical-8 | 30 steps | 50.0 | - |" in alone


def test_sweep_and_sft_rows_are_read_from_the_runs(mlflow_client):
    uri, c, exp = mlflow_client
    search = c.create_run(exp, run_name="merge_search").info.run_id
    c.log_metric(search, "cost.evaluate_candidates.wall_seconds", 80.0)
    c.log_metric(search, "cost.write_selected.wall_seconds", 20.0)
    c.log_metric(search, "cost.evaluate_candidates.peak_rss_mib", 700.0)
    cands = [c.create_run(exp, run_name=f"linear-{i}", tags={"mlflow.parentRunId": search}).info.run_id
             for i in range(3)]
    c.create_registered_model("m")
    mv = c.create_model_version("m", "file:///nowhere", run_id=cands[1])
    c.set_registered_model_alias("m", "staging", mv.version)
    sft = c.create_run(exp, run_name="knee-8").info.run_id
    c.log_metric(sft, "cost.sft.wall_seconds", 40.0)
    row = cost.sweep_row(uri, ["models:/m@staging"])
    assert (row.wall_seconds, row.peak_rss_mib) == (100.0, 700.0) and row.detail.startswith("3 candidates")
    assert cost.sweep_row(uri, [f"models:/m/{mv.version}"]) == row
    assert cost.sft_rows(uri, [("knee-8", sft, 30)]) == [CostRow("SFT knee-8", "30 steps", 40.0, None, None)]
    # trained in a worker: the sft step only logged it (0.2 s); the row is the training's own figures
    worker = c.create_run(exp, run_name="knee-full").info.run_id
    for k, v in {"cost.sft.wall_seconds": 0.2, "cost.sft_train.wall_seconds": 55.0,
                 "cost.sft_train.peak_rss_mib": 900.0}.items():
        c.log_metric(worker, k, v)
    assert cost.sft_rows(uri, [("knee-full", worker, 60)]) == [CostRow("SFT knee-full", "60 steps", 55.0, 900.0, None)]


def test_measuring_a_block_logs_nothing_and_hands_its_figures_on(monkeypatch):
    import time

    logged = []
    monkeypatch.setattr(cost, "_log", lambda *a: logged.append(a))
    active, pending = list(cost._active), list(cost._pending)   # (an earlier test may leave a run-less step)
    with cost.measuring("sft_train") as c:
        time.sleep(0.2)
        block = bytearray(64 * 2**20)   # 64 MiB touched inside the block
        block[::4096] = b"x" * len(block[::4096])
    m = c.metrics()
    assert set(m) == {"cost.sft_train.wall_seconds", "cost.sft_train.peak_rss_mib"}
    assert 0.2 <= m["cost.sft_train.wall_seconds"] < 5 and m["cost.sft_train.peak_rss_mib"] >= 64
    assert logged == [] and cost._active == active and cost._pending == pending
