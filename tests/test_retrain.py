"""Scheduled retraining: ``medmerge schedule`` (crontab on the local stack, a ZenML Schedule where the
orchestrator can schedule), the cron checks, and the ``pipelines.retrain`` entry point run twice with
nothing changed (the work is done once), then again after the training data changed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from factory import DEMO_EVAL
from zenml.enums import StackComponentType

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "medmerge" / "resources" / "eval_sample" / "mts_dialog"


def write_config(path: Path, **config) -> Path:
    path.write_text(yaml.safe_dump({"parameters": {"config": config}}))
    return path


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """Valid run configurations (tiny parents: the preflight opens them); run from the repository root."""
    from factory import make_family

    monkeypatch.chdir(ROOT)
    fam = make_family(tmp_path / "models")
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(fam["m0"]), "instruct": str(fam["m1"]),
                                     "methods": ["linear"], "ratios": [0.0, 1.0]}))
    search = write_config(tmp_path / "search.yaml", sweep=str(sweep), registered_model="sched-merge",
                          tracking_uri="http://127.0.0.1:9", output_dir=str(tmp_path / "merge_out"))
    finetune = write_config(tmp_path / "finetune.yaml", initialisations=[
        {"name": "merge", "model_uri": "models:/sched-merge@staging"}], registered_model="sched-sft",
        tracking_uri="http://127.0.0.1:9", data_dir="sample", shots=[8], output_dir=str(tmp_path / "ft_out"))
    return search, finetune


def schedule_args(tmp_path, configs, cron):
    return ["schedule", "--cron", cron, "--search-config", str(configs[0]), "--finetune-config", str(configs[1]),
            "--crontab-out", str(tmp_path / "out" / "retrain.crontab"), "--log", str(tmp_path / "retrain.log")]


def pipeline_args(tmp_path, configs, cron):
    """The same request to ``python -m pipelines.schedule`` (what ``medmerge schedule`` starts), called in this
    process so that the orchestrator and pipelines can be stood in for."""
    return schedule_args(tmp_path, configs, cron)[1:]


# --- medmerge schedule ------------------------------------------------------------------------------

def test_schedule_on_local_stack_writes_crontab_line(tmp_path, configs, capsys):
    from medmerge.cli import main

    sd = tmp_path / "systemd"
    assert main(schedule_args(tmp_path, configs, "0 3 * * 1") + ["--systemd-out", str(sd)]) == 0
    out = capsys.readouterr().out
    assert "the local orchestrator" in out and "cannot schedule" in out
    assert "no ZenML schedule was created" in out and "created, id" not in out
    lines = (tmp_path / "out" / "retrain.crontab").read_text().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("0 3 * * 1 ") and " -m pipelines.retrain " in line
    assert f"cd {ROOT} && " in line and f"--search-config {configs[0]} --finetune-config {configs[1]}" in line
    assert line.endswith(f">> {tmp_path / 'retrain.log'} 2>&1")
    assert "crontab -l 2>/dev/null | cat - " in out and "It is not installed" in out
    # the systemd pair runs the same entry point at the same times
    service, timer = (sd / "medmerge-retrain.service").read_text(), (sd / "medmerge-retrain.timer").read_text()
    assert "-m pipelines.retrain --search-config" in service and f"WorkingDirectory={ROOT}" in service
    assert "OnCalendar=Mon *-*-* 03:00:00" in timer


def test_a_scheduled_run_gets_the_tracking_uri_unless_it_carries_credentials(tmp_path):
    from medmerge.ops.schedule import scheduled_env

    env = {"ZENML_CONFIG_PATH": str(tmp_path), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "HOME": "/root"}
    assert scheduled_env(env) == {"ZENML_CONFIG_PATH": str(tmp_path.resolve()),
                                  "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert scheduled_env({"MLFLOW_TRACKING_URI": "https://user:secret@mlflow.example/"}) == {}
    assert scheduled_env({"MLFLOW_TRACKING_URI": ""}) == {}


@pytest.mark.parametrize("cron, problem", [
    ("0 3 * *", "expected 5 fields"),
    ("61 3 * * 1", "minute field '61': 61 is outside 0-59"),
    ("a b c d e", "minute field 'a': 'a' is not a number"),
])
def test_schedule_refuses_bad_cron(tmp_path, configs, capsys, cron, problem):
    from medmerge.cli import main

    assert main(schedule_args(tmp_path, configs, cron) + ["--systemd-out", str(tmp_path / "sd")]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "sd").exists()


def test_schedule_outside_the_repository_is_one_line_exit_2(tmp_path, configs, capsys, monkeypatch):
    from medmerge.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(schedule_args(tmp_path, configs, "0 3 * * 1")) == 2
    err = capsys.readouterr().err
    assert "run medmerge schedule from the medmerge repository root" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_schedule_forwards_the_pipeline_layers_error_and_exit_code(tmp_path, configs, capsys):
    """``medmerge schedule`` starts ``python -m pipelines.schedule``: its one-line error and exit 2 come through."""
    from medmerge.cli import main

    args = schedule_args(tmp_path, configs, "0 3 * * 1")
    args[args.index("--search-config") + 1] = str(tmp_path / "missing.yaml")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == f"medmerge: error: run configuration {tmp_path / 'missing.yaml'} does not exist\n"
    assert not (tmp_path / "out").exists()


class SchedulingPipeline:
    """The real ZenML pipeline, its options applied by ZenML itself (``with_options`` takes the real
    ``Schedule`` and the run config). Submitting is the one part a local store cannot do for real: it needs
    an orchestrator that schedules, so here it does what ZenML does for one, and no more: the schedule is
    created in the real (session-wide, local) ZenML store, attached to the active orchestrator and the
    pipeline, unless told to lose it."""

    def __init__(self, real, calls, create=True):
        self.real, self.calls, self.create = real, calls, create

    def with_options(self, **kw):
        self.real.with_options(**kw)   # ZenML's own checks of the options

        def submit():
            from zenml.client import Client
            from zenml.models import ScheduleRequest

            self.calls.append((self.real.name, kw))
            if self.create:
                client, s = Client(), kw["schedule"]
                client.zen_store.create_schedule(ScheduleRequest(
                    project=client.active_project.id, name=s.name, cron_expression=s.cron_expression, active=True,
                    orchestrator_id=client.active_stack_model.components[StackComponentType.ORCHESTRATOR][0].id,
                    pipeline_id=None))
        return submit


@pytest.fixture
def schedulable(monkeypatch):
    """The active ZenML stack (the session's local one) with its orchestrator saying it can schedule, and the
    two pipelines submitting as above; ``(calls, store)``. The schedules it created are deleted afterwards."""
    from zenml.client import Client

    import pipelines.finetune
    import pipelines.merge_search

    client = Client()
    orchestrator = client.active_stack.orchestrator
    monkeypatch.setattr(type(orchestrator.config), "is_schedulable", property(lambda self: True))
    calls: list = []

    def install(create=True):
        for module, name in ((pipelines.merge_search, "merge_search"), (pipelines.finetune, "finetune")):
            monkeypatch.setattr(module, name, SchedulingPipeline(getattr(module, name), calls, create))
        return calls

    yield install
    for s in client.list_schedules(name="startswith:medmerge-retrain-").items:
        client.delete_schedule(s.id)


def test_schedule_on_a_schedulable_orchestrator_attaches_a_zenml_schedule(tmp_path, configs, capsys, schedulable):
    from zenml.client import Client
    from zenml.config.schedule import Schedule

    from pipelines.schedule import main

    calls = schedulable()
    assert main(pipeline_args(tmp_path, configs, "0  3 * * 1")) == 0
    out = capsys.readouterr().out
    orchestrator = Client().active_stack.orchestrator
    assert f"(flavor {orchestrator.flavor}) can schedule" in out
    assert [c[0] for c in calls] == ["merge_search", "finetune"]
    for (name, kw), cfg in zip(calls, configs):
        assert isinstance(kw["schedule"], Schedule) and kw["schedule"].cron_expression == "0 3 * * 1"
        assert kw["config_path"] == str(cfg.resolve())
    # what the store holds is what was printed: ZenML's schedule, its id, its cron, on the active orchestrator
    for pname in ("merge_search", "finetune"):
        held = Client().get_schedule(f"medmerge-retrain-{pname}")
        assert held.cron_expression == "0 3 * * 1" and held.active and held.orchestrator_id == orchestrator.id
        assert f"schedule medmerge-retrain-{pname} ({pname}): created, id {held.id}" in out
    assert "a run with nothing changed is all cached" in out
    assert not (tmp_path / "out").exists()  # no crontab where ZenML schedules

    # again with the same cron: reported as there (read back from the store), nothing submitted twice
    assert main(pipeline_args(tmp_path, configs, "0 3 * * 1")) == 0
    assert len(calls) == 2 and "already there, unchanged" in capsys.readouterr().out
    # another cron while one exists: refused before anything is submitted
    assert main(pipeline_args(tmp_path, configs, "0 4 * * 1")) == 2
    assert len(calls) == 2 and "exists with cron '0 3 * * 1'" in capsys.readouterr().err
    assert len(Client().list_schedules(name="startswith:medmerge-retrain-").items) == 2


def test_schedule_never_claims_a_schedule_zenml_does_not_hold(tmp_path, configs, capsys, schedulable):
    from zenml.client import Client

    from pipelines.schedule import main

    calls = schedulable(create=False)
    assert main(pipeline_args(tmp_path, configs, "0 3 * * 1")) == 2
    captured = capsys.readouterr()
    assert len(calls) == 1 and "not scheduled" in captured.err and "created" not in captured.out
    assert Client().list_schedules(name="startswith:medmerge-retrain-").items == []


def test_retrain_without_a_tracking_server_is_one_line_exit_2(configs, tmp_path, capsys):
    from pipelines.retrain import main

    assert main(["--search-config", str(configs[0]), "--finetune-config", str(configs[1]),
                 "--lock-file", str(tmp_path / "lock")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retrain: error: MLflow tracking server http://127.0.0.1:9 is not reachable")
    assert err.count("\n") == 1


# --- the pieces -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cron, on_calendar", [
    ("0 3 * * 1", "Mon *-*-* 03:00:00"),
    ("*/15 * * * *", "*-*-* *:00/15:00"),
    ("30 2 1 1-6/2 *", "*-01..06/2-01 02:30:00"),
    ("0 0 * * 0,6", "Sat,Sun *-*-* 00:00:00"),
])
def test_systemd_on_calendar(cron, on_calendar):
    from medmerge.ops.schedule import CronError, systemd_on_calendar

    assert systemd_on_calendar(cron) == on_calendar
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "calendar", on_calendar], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    with pytest.raises(CronError, match="either matches"):
        systemd_on_calendar("0 3 1 * 1")  # cron ORs day-of-month and day-of-week; OnCalendar ANDs them


def test_compare_parents_by_content():
    from medmerge.io import provenance
    from medmerge.ops.retrain import compare_parents

    now = {"/m/clinical": {"model.safetensors": "a" * 64}, "/m/instruct": {"model.safetensors": "b" * 64}}
    tags = provenance.tags(now)
    assert set(tags) == {"parents_weight_hashes", "parents_fingerprint"}
    assert json.loads(tags["parents_weight_hashes"]) == now and tags["parents_fingerprint"] == provenance.fingerprint(now)
    assert compare_parents(now, tags, "m v1") == ([], [])
    moved = {"/new/clinical": now["/m/clinical"], "/m/instruct": now["/m/instruct"]}
    reasons, notes = compare_parents(moved, tags, "m v1")
    assert reasons == [] and "moved, unchanged" in notes[0]
    changed = {**now, "/m/instruct": {"model.safetensors": "c" * 64}}
    reasons, _ = compare_parents(changed, tags, "m v1")
    assert reasons == [f"parent /m/instruct changed since m v1: model.safetensors {'b' * 12}… -> {'c' * 12}…"]
    assert compare_parents(now, {}, "m v1")[0] == ["m v1 has no parents_weight_hashes tag"]
    # a version registered before the tags were named so: the same JSON under parents_sha256, no fingerprint
    legacy = {"parents_sha256": tags["parents_weight_hashes"]}
    assert compare_parents(now, legacy, "m v1") == ([], [])
    assert compare_parents(changed, legacy, "m v1")[0][0].startswith("parent /m/instruct changed since m v1")
    # a JSON cut at the registry's tag limit: the fingerprint still decides
    cut = {**tags, "parents_weight_hashes": tags["parents_weight_hashes"][:10] + "x" * 5000}
    assert compare_parents(now, cut, "m v1") == ([], [])
    assert compare_parents(changed, cut, "m v1")[0] == [
        "the parents changed since m v1 (its parents_fingerprint differs; its parents_weight_hashes tag was cut, "
        "so which parent is not known)"]


def test_retrain_compares_each_task_of_a_multi_task_run_with_its_own_model(configs, tmp_path, monkeypatch):
    """A ``tasks:`` finetune config registers one model per task (<registered_model>-<task>): retrain hashes
    each task's training data and compares it with that model's version, so only a changed task is a reason."""
    from medmerge.io import provenance
    from medmerge.ops import retrain
    from medmerge.tracking import registry
    from pipelines.retrain import load_configs

    for name in ("notes_a", "notes_b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"id": f"{name}{i}", "input": f"{name} input {i}", "target": f"target {i}",
                        "split": "train" if i < 10 else "test"}) + "\n" for i in range(12)))
    doc = yaml.safe_load(configs[1].read_text())
    doc["parameters"]["config"]["tasks"] = [str(tmp_path / "notes_a.jsonl"), str(tmp_path / "notes_b.jsonl")]
    multi = write_config(tmp_path / "multi.yaml", **doc["parameters"]["config"])
    search_cfg, ft_cfg = load_configs(str(configs[0]), str(multi))

    versions: dict = {}
    monkeypatch.setattr(registry, "staged_version", lambda uri, name: versions.get(name))
    monkeypatch.setattr(registry, "newest_version", lambda uri, name: None)
    monkeypatch.setattr(retrain, "_last_retrain", lambda uri, key: None)

    first = retrain.decide(search_cfg, ft_cfg)
    assert [(d.task, d.registered_model, d.finetuned) for d in first.data] == [
        ("notes_a", "sched-sft-notes_a", None), ("notes_b", "sched-sft-notes_b", None)]
    assert first.reasons == ["nothing promoted yet: sched-merge has no staging version",
                             "nothing fine-tuned yet: sched-sft-notes_a has no version",
                             "nothing fine-tuned yet: sched-sft-notes_b has no version"]
    sha = {d.task: d.train_sha256 for d in first.data}
    assert sha["notes_a"] != sha["notes_b"]

    def version(name, **tags):
        return SimpleNamespace(name=name, version="1", tags=tags)

    versions["sched-merge"] = version("sched-merge", **provenance.tags(first.parents))
    versions["sched-sft-notes_a"] = version("sched-sft-notes_a", train_sha256=sha["notes_a"])
    versions["sched-sft-notes_b"] = version("sched-sft-notes_b", train_sha256="0" * 64)
    again = retrain.decide(search_cfg, ft_cfg)
    assert again.changed and again.reasons == [
        f"training data changed since sched-sft-notes_b v1: train_sha256 {'0' * 12}… -> {sha['notes_b'][:12]}…"]
    assert [d.finetuned.version for d in again.data] == ["1", "1"]
    assert f"data     train_sha256.notes_a {sha['notes_a'][:12]}" in again.describe()

    versions["sched-sft-notes_b"] = version("sched-sft-notes_b", train_sha256=sha["notes_b"])
    assert not retrain.decide(search_cfg, ft_cfg).changed


def test_a_multi_task_retrain_records_each_tasks_run_and_versions(monkeypatch, capsys):
    """After both pipelines ran, the retrain record names each task's finetune run and versions."""
    from medmerge.ops import retrain
    from pipelines import finetune, merge_search
    from pipelines.retrain import _run_pipelines

    def task(run_id, versions):
        return {"tracking": SimpleNamespace(parent_run_id=run_id), "summary": SimpleNamespace(versions=versions)}

    monkeypatch.setattr(merge_search, "run", lambda cfg, knee: {
        "results": SimpleNamespace(parent_run_id="search-run"), "versions": {"linear-0.5": "3"}, "promotion": None})
    monkeypatch.setattr(finetune, "run", lambda cfg: {"tasks": {"notes_a": task("run-a", {"m-8": "1"}),
                                                                "notes_b": task("run-b", {"m-8": "2"})}})
    closed = {}
    monkeypatch.setattr(retrain, "close_record", lambda uri, rid, ok, outputs=None, error=None:
                        closed.update(ok=ok, outputs=outputs))
    out = _run_pipelines(None, "search.yaml", "finetune.yaml", False, "http://mlflow", "rid")
    assert out["outcome"] == "ran" and closed["ok"]
    assert closed["outputs"] == {"merge_search_run": "search-run", "merge_versions": {"linear-0.5": "3"},
                                 "finetune_run": {"notes_a": "run-a", "notes_b": "run-b"},
                                 "finetune_versions": {"notes_a": {"m-8": "1"}, "notes_b": {"m-8": "2"}}}
    assert "fine-tuned versions {'notes_a': {'m-8': '1'}, 'notes_b': {'m-8': '2'}}" in capsys.readouterr().out


# --- the entry point, end to end ------------------------------------------------------------------------

def _versions(uri, name):
    from mlflow import MlflowClient

    return sorted(int(v.version) for v in MlflowClient(uri).search_model_versions(f"name='{name}'"))


def _runs(uri, experiment):
    from mlflow import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def _zenml_runs(name):
    from zenml.client import Client

    return Client().list_pipeline_runs(pipeline_name=name, size=1).total


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_runs_only_when_something_changed(demo_models, mlflow_server, demo_eval_cache, tmp_path, capsys,
                                                 monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from pipelines.retrain import main

    data = tmp_path / "mts.jsonl"  # the training data as a file the test can change
    data.write_text((SAMPLE / "train.jsonl").read_text() + (SAMPLE / "test.jsonl").read_text())
    uri = mlflow_server.uri
    monkeypatch.setenv("MEDMERGE_CACHE_DIR", str(demo_eval_cache))   # the demo sweep's scores, computed once
    sweep = tmp_path / "sweep.yml"
    sweep.write_text(yaml.safe_dump({"clinical": str(demo_models["clinical"]),
                                     "instruct": str(demo_models["instruct"]),
                                     "methods": ["linear"], "ratios": [0.0, 0.5, 1.0]}))
    search = write_config(tmp_path / "search.yaml", sweep=str(sweep), **DEMO_EVAL,
                          output_dir=str(tmp_path / "selected"), registered_model="rt-merge",
                          experiment="rt-search", tracking_uri=uri)
    finetune = write_config(
        tmp_path / "finetune.yaml", initialisations=[{"name": "merge", "model_uri": "models:/rt-merge@staging"}],
        task=str(data), eval_split="test", eval_limit=4, shots=[8],
        sft={"epochs": 1, "per_device_batch": 8, "grad_accum": 2, "min_steps_few_shot": 4, "max_length": 512,
             "gradient_checkpointing": False},
        generation={"max_new_tokens": 32},
        forgetting={"suites": ["ifeval"], "data_dir": "sample", "limit": 4, "max_gen_toks": 32},
        output_dir=str(tmp_path / "ft"), registered_model="rt-sft", experiment="rt-finetune", tracking_uri=uri)
    argv = ["--search-config", str(search), "--finetune-config", str(finetune), "--promote-knee",
            "--lock-file", str(tmp_path / "retrain.lock")]

    # 1. nothing promoted yet: both pipelines run, versions are registered and the knee staged
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nothing promoted yet: rt-merge has no staging version" in out
    assert "nothing fine-tuned yet: rt-sft has no version" in out
    merge_v, sft_v = _versions(uri, "rt-merge"), _versions(uri, "rt-sft")
    assert merge_v and sft_v == [1]
    runs = _runs(uri, "medmerge-retrain")
    assert [(r.data.tags["medmerge.ops.retrain"], r.info.status) for r in runs] == [("ran", "FINISHED")]
    assert runs[0].data.params["train_sha256"] and "nothing promoted yet" in runs[0].data.tags[
        "medmerge.ops.retrain.reasons"]

    # 2. nothing changed: a recorded no-op, no pipeline run, no new version
    before = {"zenml": (_zenml_runs("merge_search"), _zenml_runs("finetune")),
              "mlflow": (len(_runs(uri, "rt-search")), len(_runs(uri, "rt-finetune")))}
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no-op: nothing changed" in out and "unchanged: parents and training data match" in out
    assert _versions(uri, "rt-merge") == merge_v and _versions(uri, "rt-sft") == sft_v
    assert (_zenml_runs("merge_search"), _zenml_runs("finetune")) == before["zenml"]
    assert (len(_runs(uri, "rt-search")), len(_runs(uri, "rt-finetune"))) == before["mlflow"]
    runs = _runs(uri, "medmerge-retrain")
    assert [(r.data.tags["medmerge.ops.retrain"], r.info.status) for r in runs] == [("ran", "FINISHED"),
                                                                                  ("noop", "FINISHED")]
    noop = runs[1]
    assert noop.data.params["train_sha256"] == runs[0].data.params["train_sha256"]
    staged = MlflowClient(uri).get_model_version_by_alias("rt-merge", "staging").version
    assert noop.data.params["promoted_version"] == staged and noop.data.params["finetuned_version"] == "1"
    decision = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=noop.info.run_id, artifact_path="decision.json", dst_path=str(tmp_path / "dl"),
        tracking_uri=uri)).read_text())
    assert decision["changed"] is False and decision["reasons"] == []

    # 3. one training target edited: the data's hash names the change and fine-tuning runs again
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    first_train = next(r for r in rows if r["split"] == "train")
    first_train["target"] += " Follow up in two weeks."
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(argv + ["--dry-run"]) == 0  # says what changed; runs and records nothing
    out = capsys.readouterr().out
    assert "training data changed since rt-sft v1" in out and "dry run: nothing run, nothing recorded" in out
    assert len(_runs(uri, "medmerge-retrain")) == 2 and _versions(uri, "rt-sft") == [1]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training data changed since rt-sft v1: train_sha256" in out and "nothing promoted" not in out
    assert _versions(uri, "rt-merge") == merge_v  # the parents did not change: merge search all cached
    assert _versions(uri, "rt-sft") == [1, 2]
    runs = _runs(uri, "medmerge-retrain")
    assert [r.data.tags["medmerge.ops.retrain"] for r in runs] == ["ran", "noop", "ran"]
    assert runs[2].info.status == "FINISHED" and "training data changed" in runs[2].data.tags[
        "medmerge.ops.retrain.reasons"]
class _Registry:
    """A registry client answering from a dict of versions; a missing name fails as MLflow's does."""

    def __init__(self, versions, error=None):
        self.versions, self.error = versions, error

    def _fail(self, name):
        exc = Exception(self.error or f"Registered Model with name={name} not found")
        exc.error_code = "INTERNAL_ERROR" if self.error else "RESOURCE_DOES_NOT_EXIST"
        raise exc

    def get_model_version_by_alias(self, name, alias):
        if self.error or name not in self.versions:
            self._fail(name)
        return SimpleNamespace(version=self.versions[name][0], alias=alias)

    def get_model_version(self, name, version):
        if self.error or version not in self.versions.get(name, ()):
            self._fail(name)
        return SimpleNamespace(version=version)

    def search_model_versions(self, filter_string):
        name = filter_string.split("'")[1]
        if self.error or name not in self.versions:
            self._fail(name)
        return [SimpleNamespace(version=v) for v in self.versions[name]]


def test_staged_and_newest_version_read_the_registry(monkeypatch):
    from medmerge.tracking import registry
    from medmerge.tracking.registry import RegistryError, newest_version, staged_version

    c = _Registry({"m": ["2", "10", "3"]})
    monkeypatch.setattr(registry, "client", lambda uri: c)
    assert staged_version("uri", "m").version == "2" and newest_version("uri", "m").version == "10"
    assert staged_version("uri", "other") is None and newest_version("uri", "other") is None
    broken = _Registry({}, error="connection reset")
    monkeypatch.setattr(registry, "client", lambda uri: broken)
    with pytest.raises(RegistryError, match="cannot read m@staging from the registry: connection reset"):
        staged_version("uri", "m")
    with pytest.raises(RegistryError, match="cannot list the versions of m: connection reset"):
        newest_version("uri", "m")
