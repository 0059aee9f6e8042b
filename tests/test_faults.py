"""Faults survived, nothing lost.

* ``kill -9`` during SFT and during a sweep evaluation: the pipeline runs in its own process group and
  is SIGKILLed mid-step; no half-written checkpoint looks whole, nothing is registered, and the rerun
  resumes (the finished SFT step is a ZenML cache hit; finished candidates come from the evaluation
  cache, the rest is computed).
* The MLflow server down when a pipeline starts, or going down mid-run: one message naming the tracking
  URI, exit 2, within seconds; after the server is back (same port, same store) a rerun completes and
  no version is registered twice.
* A full disk while SFT writes its checkpoint: the temporary directory is removed and the error says so.

The pipeline scenarios run against a real MLflow server on a free loopback port, on the demo models.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import yaml
import zenml  # noqa: F401  (imported at collection: ZenML wraps the session's stdout, not a test's capsys)
from factory import DEMO_EVAL
from mlflow_api import api, api_post

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def registered(uri: str, model: str) -> list[dict]:
    """The model's versions as {version, tags}; [] when the model is not registered."""
    try:
        mvs = api(uri, "model-versions/search", filter=f"name='{model}'").get("model_versions", [])
    except urllib.error.HTTPError:
        return []
    return [{"version": v["version"], "tags": {t["key"]: t["value"] for t in v.get("tags", [])}} for v in mvs]


def runs(uri: str, experiment: str) -> list[dict]:
    try:
        exp = api(uri, "experiments/get-by-name", experiment_name=experiment)["experiment"]
    except urllib.error.HTTPError:
        return []
    return api_post(uri, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}).get("runs", [])


def parent_of(run: dict) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == "mlflow.parentRunId"), None)


def write_config(path: Path, **config) -> str:
    path.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    return str(path)


def launch(module: str, config: str, log: Path) -> subprocess.Popen:
    """``python -m <module> --config <config>`` in its own process group, with this process's environment
    (the same ZenML store, evaluation cache and offline switches)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--config", config], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, log: Path, poll: float = 0.2, timeout: float = 600.0) -> None:
    """Poll ``ready()``; when it holds, SIGKILL the pipeline's whole process group."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the pipeline exited ({proc.returncode}) before the kill point:\n"
                            + log.read_text(errors="replace")[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("the kill point was not reached in time:\n" + log.read_text(errors="replace")[-3000:])
            time.sleep(poll)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def restartable_server(tmp_path_factory):
    """A real MLflow server on a free loopback port, shared by the pipeline scenarios, which stop and restart
    it (so not the session's ``mlflow_server``): ``(state dir, port)``."""
    from medmerge.tracking.server import start, stop

    state = tmp_path_factory.mktemp("mlflow")
    info = start(state, port=0)
    yield state, int(info.uri.rsplit(":", 1)[1])
    stop(state)


def last_run_steps(pipeline: str) -> dict:
    from zenml.client import Client

    return {name: s.status for name, s in Client().get_pipeline(pipeline).last_run.steps.items()}


def stopping_server_first(monkeypatch, module, name: str, state: Path, timing: dict) -> None:
    """Patch ``module.name`` so that the MLflow server stops just before it runs: the server going
    down mid-run, between two steps. ``timing["seconds"]`` gets how long the call took to fail."""
    from medmerge.tracking.server import stop

    real = getattr(module, name)

    def patched(*args, **kwargs):
        stop(state)
        t0 = time.monotonic()
        try:
            return real(*args, **kwargs)
        finally:
            timing["seconds"] = time.monotonic() - t0

    monkeypatch.setattr(module, name, patched)


# ---------------------------------------------------------------------------------------------
# kill -9 during SFT; then the server goes down mid-run; then it is back
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.integration
def test_finetune_survives_kill_during_sft_and_server_loss(demo_models, restartable_server, tmp_path, capsys,
                                                           monkeypatch):
    from zenml.enums import ExecutionStatus as S

    from medmerge import finetune as core
    from medmerge.tracking.server import start
    from pipelines.finetune import main, run

    state, port = restartable_server
    uri = start(state, port=port).uri  # running (a scenario before may have restarted it)
    sleeper = subprocess.Popen(["sleep", "600"])  # a live process: its temporary directories are kept
    out = tmp_path / "out"
    sft_dir = out / "sft"
    model, experiment = "faults-sft", "faults-finetune"
    try:
        config = write_config(
            tmp_path / "finetune.yaml",
            initialisations=[{"name": "clinical", "path": str(demo_models["clinical"])}],
            task="mts_dialog", data_dir="sample", eval_limit=4, shots=[8, 16],
            sft={"epochs": 1, "learning_rate": 1e-3, "per_device_batch": 8, "grad_accum": 2, "max_length": 512,
                 "min_steps_few_shot": 3, "gradient_checkpointing": False},
            generation={"max_new_tokens": 16},
            forgetting={"suites": ["ifeval"], "data_dir": "sample", "limit": 4, "max_gen_toks": 16},
            output_dir=str(out), registered_model=model, experiment=experiment, tracking_uri=uri)
        labels = ["clinical-8", "clinical-16"]

        # 1. kill -9 once one SFT checkpoint is written and the other SFT has started
        def one_done_other_training():
            done = [x for x in labels if (sft_dir / x / "config.json").exists()]
            started = {r["info"]["run_name"] for r in runs(uri, experiment) if parent_of(r)}
            return len(done) == 1 and set(labels) - set(done) <= started

        log = tmp_path / "killed.log"
        proc = launch("pipelines.finetune", config, log)
        kill_when(proc, one_done_other_training, log)
        (first,) = [x for x in labels if (sft_dir / x).exists()]
        (second,) = set(labels) - {first}
        # nothing half-made looks whole: the finished checkpoint is complete, the killed one has no directory
        assert sorted(p.name for p in sft_dir.iterdir() if not p.name.startswith(".")) == [first]
        assert CHECKPOINT_FILES <= {p.name for p in (sft_dir / first).iterdir()}
        assert registered(uri, model) == []
        # a kill during the rename-into-place leaves only hidden temporary directories; plant one for the
        # killed process (removed by the rerun) and one for a live process (kept: it may still be writing)
        host = socket.gethostname()
        dead_tmp = sft_dir / f".medmerge-tmp-{second}.{host}.{proc.pid}.killed"
        live_tmp = sft_dir / f".medmerge-tmp-{second}.{host}.{sleeper.pid}.writing"
        for d in (dead_tmp, live_tmp):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"half")

        # 2. rerun; the server goes down just before the last step: a clear error naming the URI, exit 2
        timing: dict = {}
        stopping_server_first(monkeypatch, core, "summarise_and_register", state, timing)
        assert main(["--config", config]) == 2
        err = capsys.readouterr().err
        assert f"MLflow tracking server {uri} is not reachable" in err and "step summarise failed" in err
        assert timing["seconds"] < 60, timing  # seconds, not MLflow's minutes of retries
        steps = last_run_steps("finetune")
        assert steps[f"sft_{first.replace('-', '_')}"] == S.CACHED  # the finished SFT is not recomputed
        assert steps[f"sft_{second.replace('-', '_')}"] == S.COMPLETED
        assert steps["summarise"] == S.FAILED
        assert list(sft_dir.glob(".medmerge-tmp-*")) == [live_tmp]  # the killed process's are gone, even real ones
        assert sorted(p.name for p in sft_dir.iterdir() if not p.name.startswith(".")) == sorted(labels)
        monkeypatch.undo()

        # 3. the server is back on the same port and store: the rerun completes, one version per model
        assert start(state, port=port).uri == uri
        assert registered(uri, model) == []
        result = run(config)
        steps = {n: s.status for n, s in result["run"].steps.items()}
        assert steps["summarise"] == S.COMPLETED
        assert all(s == S.CACHED for n, s in steps.items()
                   if n not in ("load_data", "resolve_initialisations", "summarise", "promote_finetuned")), steps
        assert steps["promote_finetuned"] == S.COMPLETED
        versions = registered(uri, model)
        assert sorted(f"{v['tags']['initialisation']}-{v['tags']['shots']}" for v in versions) == sorted(labels)
        assert len({v["tags"]["candidate_identity"] for v in versions}) == len(labels)
        assert result["summary"].versions == {
            f"{v['tags']['initialisation']}-{v['tags']['shots']}": v["version"] for v in versions}
        # MLflow: the killed run's parent and its (init, shots) runs were resumed, none left dangling
        all_runs = runs(uri, experiment)
        parents = [r for r in all_runs if not parent_of(r)]
        nested = [r for r in all_runs if parent_of(r)]
        assert [r["info"]["status"] for r in parents] == ["FINISHED"]
        assert sorted(r["info"]["run_name"] for r in nested) == sorted(labels)
        assert all(r["info"]["status"] == "FINISHED" for r in nested)
    finally:
        sleeper.kill()
        sleeper.wait()


# ---------------------------------------------------------------------------------------------
# kill -9 during a sweep evaluation; then the server goes down mid-run; then it is back
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.integration
def test_merge_search_survives_kill_during_evaluation_and_server_loss(demo_models, restartable_server, tmp_path,
                                                                    capsys,
                                                                    monkeypatch):
    from zenml.client import Client
    from zenml.enums import ExecutionStatus as S

    from medmerge.selection import search
    from medmerge.tracking.server import start
    from pipelines.merge_search import main, run

    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(cache))  # the killed run's and the reruns' evaluation cache
    state, port = restartable_server
    uri = start(state, port=port).uri
    model = "faults-merge"
    ratios = [0.0, 0.5, 1.0]
    n_tasks = 11  # ten clinical tasks and IFEval per candidate
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                     "instruct": str(demo_models["instruct"]),
                                     "methods": ["linear"], "ratios": ratios}))
    config = write_config(
        tmp_path / "merge.yaml", sweep=str(sweep), **DEMO_EVAL, output_dir=str(tmp_path / "selected"),
        registered_model=model,
        experiment="faults-merge-search", tracking_uri=uri)

    def cached() -> set[Path]:
        return set((cache / "eval").glob("*/*.json"))

    # 1. kill -9 once a candidate is evaluated (and cached), mid-sweep
    log = tmp_path / "killed.log"
    proc = launch("pipelines.merge_search", config, log)
    kill_when(proc, lambda: len(cached()) >= n_tasks, log, poll=0.05)
    before = cached()
    assert n_tasks <= len(before) < len(ratios) * n_tasks
    assert not (tmp_path / "selected").exists() and registered(uri, model) == []

    # 2. rerun; the server goes down before the selected checkpoints are written: exit 2, naming the URI
    stopping_server_first(monkeypatch, search, "write_selected", state, {})
    assert main(["--config", config]) == 2
    err = capsys.readouterr().err
    steps = last_run_steps("merge_search")
    # the first MLflow step after the server went down fails (ZenML may run log_search before or after it)
    failed = [n for n, st in steps.items() if st == S.FAILED]
    assert failed in (["log_search"], ["register_selected"]), steps
    assert f"MLflow tracking server {uri} is not reachable" in err and f"step {failed[0]} failed" in err
    assert steps["evaluate_candidates"] == S.COMPLETED
    results = Client().get_pipeline("merge_search").last_run.steps["evaluate_candidates"].output.load()
    reused = {c.name: len(c.report.cached_tasks) for c in results.candidates}
    # every cached (candidate, task) was reused, not recomputed; the rest was computed and cached
    assert sum(reused.values()) == len(before), reused
    assert sum(n == n_tasks for n in reused.values()) >= 1 and min(reused.values()) == 0, reused
    assert len(cached()) == len(ratios) * n_tasks
    monkeypatch.undo()
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(cache))

    # 3. the server is back: the rerun completes; each selected candidate registered once
    assert start(state, port=port).uri == uri
    outcome = run(config)
    versions = registered(uri, model)
    # the near-frontier candidates and the picks (best per method: here a merge, as the near set is a parent)
    picked = {p["candidate"] for p in outcome["promotion"].picks.values()}
    assert sorted(v["tags"]["candidate"] for v in versions) == sorted(set(outcome["frontier"].near) | picked)
    assert len({v["tags"]["candidate_identity"] for v in versions}) == len(versions)
    assert {v["tags"]["candidate"]: v["version"] for v in versions} == outcome["versions"]
    steps = last_run_steps("merge_search")
    assert steps["register_selected"] == S.COMPLETED
    assert steps["log_search"] == (S.COMPLETED if failed == ["log_search"] else S.CACHED)
    assert all(steps[n] == S.CACHED for n in ("evaluate_candidates", "select_frontier", "write_selected"))
    # MLflow: the killed run's parent run was resumed and finished; one run per candidate, none dangling
    all_runs = runs(uri, "faults-merge-search")
    parents = [r for r in all_runs if not parent_of(r)]
    nested = [r for r in all_runs if parent_of(r)]
    assert [r["info"]["status"] for r in parents] == ["FINISHED"]
    assert sorted(r["info"]["run_name"] for r in nested) == sorted(f"linear-{x}" for x in ratios)
    assert all(r["info"]["status"] == "FINISHED" for r in nested)


# ---------------------------------------------------------------------------------------------
# the MLflow server is down when a pipeline starts
# ---------------------------------------------------------------------------------------------

def dead_uri() -> str:
    from medmerge.tracking.server import free_port

    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("pipeline", ["merge_search", "finetune"])
def test_server_down_at_start_names_the_uri(tmp_path, capsys, pipeline):
    import importlib

    from factory import make_family

    uri, out = dead_uri(), tmp_path / "out"
    fam = make_family(tmp_path / "fam", n_children=2)   # real parents: the preflight opens them before the server
    if pipeline == "merge_search":
        sweep = tmp_path / "sweep.yml"
        sweep.write_text(yaml.safe_dump({"clinical": str(fam["m0"]), "instruct": str(fam["m1"])}))
        config = write_config(tmp_path / "run.yaml", sweep=str(sweep), output_dir=str(out), tracking_uri=uri)
    else:
        config = write_config(tmp_path / "run.yaml", initialisations=[{"name": "c", "path": str(fam["m0"])}],
                              data_dir="sample", shots=[8], output_dir=str(out), tracking_uri=uri)
    t0 = time.monotonic()
    assert importlib.import_module(f"pipelines.{pipeline}").main(["--config", config]) == 2
    assert time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert f"{pipeline}: error: MLflow tracking server {uri} is not reachable" in err
    assert not out.exists()


def test_a_call_to_a_dead_server_fails_in_seconds_naming_the_uri():
    from medmerge.tracking import registry

    uri = dead_uri()
    c = registry.client(uri)
    t0 = time.monotonic()
    with pytest.raises(registry.RegistryError, match=f"MLflow tracking server {uri} is not reachable"):
        c.search_experiments()
    assert time.monotonic() - t0 < 30


# ---------------------------------------------------------------------------------------------
# the disk fills while SFT writes its checkpoint
# ---------------------------------------------------------------------------------------------

def _enospc():
    return OSError(errno.ENOSPC, "No space left on device")


def _safetensors_enospc():  # what safetensors really raises on a full disk (not an OSError)
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("error", [_enospc, _safetensors_enospc], ids=["oserror", "safetensors"])
def test_disk_full_during_sft_write_removes_the_temp_dir_and_says_so(demo_models, tmp_path, monkeypatch, error):
    import transformers.modeling_utils

    from medmerge.errors import OutputError
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.finetune.sft import SFTSettings, finetune
    from medmerge.generation.data import load_task

    def full(state_dict, filename, metadata=None):
        Path(filename).write_bytes(b"half a tensor")  # some bytes land before the device fills
        raise error()

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full)
    examples = load_task("mts_dialog", "train", data_dir=resolve_data_dir("sample"))[:4]
    out = tmp_path / "sft" / "clinical-8"
    settings = SFTSettings(per_device_batch=2, grad_accum=1, max_length=512, gradient_checkpointing=False)
    with pytest.raises(OutputError, match="no space left on device while writing") as exc:
        finetune(demo_models["clinical"], examples, out, settings, max_steps=1)
    msg = str(exc.value)
    assert f"no space left on device while writing {out}" in msg
    assert "the temporary directory" in msg and msg.endswith("was removed")
    tmp = Path(msg.split("the temporary directory ", 1)[1].removesuffix(" was removed"))
    assert tmp.parent == out.parent and tmp.name.startswith(".medmerge-tmp-clinical-8.") and not tmp.exists()
    assert not out.exists() and not out.parent.exists()   # sft/ was created by the failed write: removed too


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    """Temporary directories of dead processes (same output, this host) go; a live writer's stay."""
    from medmerge.io.atomic import atomic_dir

    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        left = {"dead": tmp_path / f".medmerge-tmp-out.{host}.{dead.pid}.x",
                "live": tmp_path / f".medmerge-tmp-out.{host}.{live.pid}.x",
                "other output": tmp_path / f".medmerge-tmp-other.{host}.{dead.pid}.x"}
        for d in left.values():
            d.mkdir()
        with atomic_dir(tmp_path / "out") as tmp:
            assert tmp.name.startswith(f".medmerge-tmp-out.{host}.{os.getpid()}.")
            (tmp / "weights").write_text("whole")
        assert (tmp_path / "out" / "weights").read_text() == "whole"
        assert sorted(tmp_path.glob(".medmerge-tmp-*")) == sorted([left["live"], left["other output"]])
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------------------------
# two runs of one configuration at the same moment
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.integration
def test_two_runs_of_one_config_at_once_never_share_a_parent_run_or_register_twice(demo_models, restartable_server,
                                                                                     demo_eval_cache, monkeypatch,
                                                                                     tmp_path):
    """Both are started together: the second waits for the first (saying so) and then runs from ZenML's cache.
    MLflow ends with one parent run, one nested run per candidate, one version per selected candidate."""
    from medmerge.tracking.server import start

    state, port = restartable_server
    uri = start(state, port=port).uri
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(demo_eval_cache))   # both processes: the demo sweep's scores
    model, experiment = "concurrent-merge", "concurrent-merge-search"
    ratios = [0.0, 0.5, 1.0]
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                     "instruct": str(demo_models["instruct"]), "methods": ["linear"],
                                     "ratios": ratios}))
    config = write_config(
        tmp_path / "merge.yaml", sweep=str(sweep), **DEMO_EVAL, output_dir=str(tmp_path / "selected"),
        registered_model=model,
        experiment=experiment, tracking_uri=uri)
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    procs = [launch("pipelines.merge_search", config, log) for log in logs]
    try:
        codes = [p.wait(timeout=1200) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0], "\n".join(t[-2000:] for t in text)
    waited = [t for t in text if "run of this configuration" in t and "is in progress; waiting" in t]
    assert len(waited) == 1, "exactly one of the two waited for the other"

    all_runs = runs(uri, experiment)
    parents = [r for r in all_runs if not parent_of(r)]
    nested = [r for r in all_runs if parent_of(r)]
    assert [r["info"]["status"] for r in parents] == ["FINISHED"]          # one parent run, not two mixed
    candidates = sorted(r["info"]["run_name"] for r in nested if r["info"]["run_name"] != "promotion")
    assert candidates == sorted(f"linear-{x}" for x in ratios)
    assert {parent_of(r) for r in nested} == {parents[0]["info"]["run_id"]}
    # the second run's promote step found the parent closed: its decision went to a nested run, not into it
    later = [r for r in nested if r["info"]["run_name"] == "promotion"]
    assert len(later) == 1 and later[0]["info"]["status"] == "FINISHED"
    assert parents[0]["info"]["end_time"] <= later[0]["info"]["start_time"]
    versions = registered(uri, model)
    identities = [v["tags"]["candidate_identity"] for v in versions]
    assert versions and len(identities) == len(set(identities))           # nothing registered twice
