"""The pipelines' preflight (medmerge/preflight/): a run config with a mistake exits 2 before any step runs
(before ZenML is even imported), with exactly one line naming the mistake, and writes nothing. No pipeline runs
here: the entry points stop at the preflight, and good configs are checked by the preflight alone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from factory import SHARED_DATA, make_family

from medmerge.preflight import PreflightError, check_run_configs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny parents: base, m0 (clinical), m1 (instruct)."""
    return make_family(tmp_path_factory.mktemp("models"))


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """The current directory: an empty folder inside ``tmp_path``."""
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def search_cfg(models, out: Path, **kw) -> dict:
    sweep = {"clinical": str(models["m0"]), "instruct": str(models["m1"]), "base": str(models["base"]),
             "methods": ["linear", "slerp"], "ratios": [0.0, 0.5, 1.0]}
    return {"sweep": sweep, "data_dir": "sample", "limit": 2, "output_dir": str(out), **kw}


def finetune_cfg(models, out: Path, **kw) -> dict:
    return {"initialisations": [{"name": "clinical", "path": str(models["m0"])}], "data_dir": "sample",
            "shots": [0, 8, "full"], "output_dir": str(out), **kw}


def write(path: Path, config: dict, **top) -> Path:
    path.write_text(yaml.safe_dump({**top, "parameters": {"config": config}}, sort_keys=False))
    return path


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its size and modification time."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if name in files else None, st.st_mtime_ns)
    return out


def refused(main, args: list[str], tmp_path: Path, capsys) -> list[str]:
    """Run an entry point that must stop at the preflight: exit 2, no ZenML loaded, nothing under ``tmp_path``
    created or changed; returns its stderr lines."""
    before = tree(tmp_path)
    had_zenml = "zenml" in sys.modules
    assert main(args) == 2
    assert tree(tmp_path) == before
    if not had_zenml:
        assert "zenml" not in sys.modules
    return capsys.readouterr().err.strip().splitlines()


# --- merge_search ----------------------------------------------------------------------------------------

SEARCH_CASES = [
    # (config changes, the key the one line names, what it says)
    ({"limit": 0}, "limit", "greater than or equal to 1"),
    ({"limit": -3}, "limit", "greater than or equal to 1"),
    ({"max_gen_toks": 0}, "max_gen_toks", "greater than or equal to 1"),
    ({"batch_size": 0}, "batch_size", "at least 1"),
    ({"batch_size": "lots"}, "batch_size", "'auto'"),
    ({"num_fewshot": -1}, "num_fewshot", "greater than or equal to 0"),
    ({"eps": -0.1}, "eps", "greater than or equal to 0"),
    ({"limit": True}, "limit", "expected a number, got the boolean True"),
    ({"limit": "8"}, "limit", "expected a number, got the string '8'"),
    ({"study_storage": "not a url"}, "study_storage", "not a SQLAlchemy URL"),
    ({"study_storage": "nosuchdb://host/db"}, "study_storage", "unknown database dialect 'nosuchdb'"),
    ({"study_storage": "sqlite:////nonexistent/dir/optuna.db"}, "study_storage", "/nonexistent/dir does not exist"),
    ({"study_storage": "postgresql:///optuna"}, "study_storage", "names no host"),
    ({"tracking_uri": "ftp://mlflow.example.com"}, "tracking_uri", "unknown scheme 'ftp'"),
    ({"tracking_uri": "htp://localhost:5000"}, "tracking_uri", "unknown scheme 'htp'"),
    ({"tracking_uri": "http://"}, "tracking_uri", "has no host"),
    ({"tracking_uri": "http://localhost:99999"}, "tracking_uri", "port"),
    ({"registered_model": ""}, "registered_model", "empty"),
    ({"registered_model": "team/model"}, "registered_model", "cannot contain '/'"),
    ({"registered_model": "a:b"}, "registered_model", "cannot contain '/' or ':'"),
    ({"registered_model": "50%"}, "registered_model", "'%'"),
    ({"registered_model": "m@x"}, "registered_model", "'@'"),
    ({"experiment": " "}, "experiment", "empty"),
    ({"picks": ["linear-0.7"]}, "picks", "'linear-0.7' names no candidate of this grid; did you mean 'linear-0.5'?"),
    ({"promote": ["slerp-0.9"]}, "promote", "'slerp-0.9' names no candidate of this grid"),
    ({"picks": "best_of_all"}, "picks", "unknown policy 'best_of_all'"),
    ({"promote": "always"}, "promote", "unknown policy 'always'"),
    ({"suites": ["clinicl"]}, "suites", "unknown suite 'clinicl'"),
    ({"suites": []}, "suites", "no suite given"),
    ({"objectives": ["if_score", "medical_avgg"]}, "objectives", "unknown objective 'medical_avgg'"),
    ({"objectives": ["if_score", "mm_hellaswag"]}, "objectives", "needs task mm_hellaswag"),
    ({"suites": ["clinical"]}, "objectives", "if_score"),   # the default pair needs ifeval: the default is checked
    ({"limt": 3}, "limt", "unknown key; did you mean 'limit'?"),
    ({"output_dirr": "x"}, "output_dirr", "unknown key; did you mean 'output_dir'?"),
    ({"data_dir": "/nonexistent/eval-data"}, "data_dir", "data directory /nonexistent/eval-data does not exist"),
    ({"device": "gpu-please"}, "device", "unknown device 'gpu-please'"),
    ({"device": "cuda:99"}, "device", "CUDA GPU"),   # none here, or fewer than 100
    ({"use_stderr": "yes"}, "use_stderr", "expected true or false, got 'yes'"),
]


@pytest.mark.parametrize("change, key, says", SEARCH_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(SEARCH_CASES)])
def test_merge_search_refuses_a_bad_value_in_one_line(models, work, tmp_path, capsys, change, key, says):
    from pipelines.merge_search import main

    cfg = write(tmp_path / "run.yaml", search_cfg(models, tmp_path / "out", **change))
    err = refused(main, ["--config", str(cfg)], tmp_path, capsys)
    assert len(err) == 1, err
    assert err[0].startswith(f"merge_search: error: {cfg}: parameters.config.{key}: "), err
    assert says in err[0], err


@pytest.mark.parametrize("sweep_change, key, says", [
    ({"clinical": "does/not/exist"}, "sweep.clinical", "parent clinical does/not/exist does not exist"),
    ({"instruct": "./missing-model"}, "sweep.instruct", "does not exist"),
    ({"ratio": [0.5]}, "sweep.ratio", "unknown key; did you mean 'ratios'?"),
    ({"methods": ["linear", "frobnicate"]}, "sweep", "frobnicate"),
    ({"ratios": [0.5, 1.5]}, "sweep", "ratio 1.5 is outside [0, 1]"),
    ({"methods": {"dare_ties": {"density": [2.0]}}, "ratios": None}, "sweep", "density"),
    ({"search": "optuna", "budget": 2, "methods": {"linear": {"ratio": {"low": 0.0, "high": 1.0}}},
      "ratios": None}, None, None),   # valid: no problem of the sweep (see the picks case below)
])
def test_merge_search_refuses_a_bad_sweep_in_one_line(models, work, tmp_path, capsys, sweep_change, key, says):
    from pipelines.merge_search import main

    cfg = search_cfg(models, tmp_path / "out")
    cfg["sweep"] = {k: v for k, v in {**cfg["sweep"], **sweep_change}.items() if v is not None}
    if key is None:   # an Optuna search names its candidates while it runs: picks by name are refused
        cfg["picks"] = ["linear-ratio=0.3"]
        key, says = "picks", "search: optuna names its candidates while it runs"
    path = write(tmp_path / "run.yaml", cfg)
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    assert len(err) == 1, err
    assert err[0].startswith(f"merge_search: error: {path}: parameters.config.{key}: ") and says in err[0], err


def test_parents_that_cannot_be_merged_are_named_before_any_step(models, work, tmp_path, capsys):
    from pipelines.merge_search import main

    other = make_family(tmp_path / "wide", n_children=1, hidden_size=64, intermediate_size=96, head_dim=16)
    cfg = search_cfg(models, tmp_path / "out")
    cfg["sweep"]["instruct"] = str(other["m0"])
    path = write(tmp_path / "run.yaml", cfg)
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    assert len(err) == 1 and f"{path}: parameters.config.sweep: tensor " in err[0] and "has shape" in err[0], err


def test_a_hub_id_is_taken_as_a_parent_but_a_missing_path_is_not(models, work, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = search_cfg(models, tmp_path / "out")
    cfg["sweep"]["instruct"] = "meta-llama/Llama-3.2-1B-Instruct@main"   # org/name[@rev]: fetched from the Hub
    check_run_configs(search=write(tmp_path / "hub.yaml", cfg))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # offline, a Hub id must already be cached
    with pytest.raises(PreflightError, match=r"sweep\.instruct: .*HF_HUB_OFFLINE is set with no Hub copy"):
        check_run_configs(search=write(tmp_path / "hub.yaml", cfg))


def test_a_directory_that_is_no_checkpoint_is_named(models, work, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = search_cfg(models, tmp_path / "out")
    cfg["sweep"]["base"] = str(tmp_path / "empty")
    with pytest.raises(PreflightError, match=r"sweep\.base: parent base .*empty holds no config\.json"):
        check_run_configs(search=write(tmp_path / "run.yaml", cfg))


def test_a_sweep_file_that_does_not_exist_is_named(models, work, tmp_path):
    cfg = search_cfg(models, tmp_path / "out", sweep=str(tmp_path / "nope.yml"))
    with pytest.raises(PreflightError, match="nope.yml does not exist") as e:
        check_run_configs(search=write(tmp_path / "run.yaml", cfg))
    assert e.value.problems == [f"{tmp_path / 'run.yaml'}: parameters.config.sweep: sweep file "
                                f"{tmp_path / 'nope.yml'} does not exist"]


# --- output folders -------------------------------------------------------------------------------------

def test_output_dir_dot_and_ancestors_are_refused(models, work, tmp_path, capsys):
    from pipelines.merge_search import main

    for out, says in ((".", "is the current directory"), ("..", "contains the current directory"),
                      (str(tmp_path), "contains the current directory")):
        cfg = write(tmp_path / "run.yaml", search_cfg(models, tmp_path / "x", output_dir=out))
        err = refused(main, ["--config", str(cfg)], tmp_path, capsys)
        assert len(err) == 1 and f"parameters.config.output_dir: output_dir {out} {says}" in err[0], err


def test_output_dir_that_is_a_file_or_below_one_is_refused(models, work, tmp_path, capsys):
    from pipelines.finetune import main

    (tmp_path / "notes.txt").write_text("mine")
    for out, says in ((tmp_path / "notes.txt", "is a file, not a directory"),
                      (tmp_path / "notes.txt" / "out", "is a file, not a directory")):
        cfg = write(tmp_path / "run.yaml", finetune_cfg(models, out))
        err = refused(main, ["--config", str(cfg)], tmp_path, capsys)
        assert len(err) == 1 and "parameters.config.output_dir: " in err[0] and says in err[0], err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_output_dir_holding_or_inside_a_parent_is_refused(models, work, tmp_path, capsys):
    from pipelines.merge_search import main

    for out, says in ((models["m0"].parent, "contains the parent"), (models["m0"] / "sub", "lies inside the parent"),
                      (models["m1"], "is the parent")):
        cfg = write(tmp_path / "run.yaml", search_cfg(models, out))
        err = refused(main, ["--config", str(cfg)], tmp_path, capsys)
        assert len(err) == 1 and "parameters.config.output_dir: " in err[0] and says in err[0], err


def test_output_dir_with_files_medmerge_did_not_write_is_refused(models, work, tmp_path, capsys):
    from pipelines.merge_search import main

    out = tmp_path / "mine"
    (out / "thesis").mkdir(parents=True)
    (out / "thesis" / "chapter1.tex").write_text("\\section{}")
    cfg = write(tmp_path / "run.yaml", search_cfg(models, out))
    err = refused(main, ["--config", str(cfg)], tmp_path, capsys)
    assert len(err) == 1 and "output_dir " + str(out) + " holds thesis, which medmerge did not write" in err[0], err


def test_output_dir_holding_medmerge_outputs_is_accepted(models, work, tmp_path):
    out = tmp_path / "out"
    (out / "linear-0.5").mkdir(parents=True)
    (out / "linear-0.5" / "medmerge.json").write_text("{}")   # a candidate written by an earlier run
    (out / "optuna.db").write_text("")
    from medmerge.io.atomic import MARKER

    (out / "slerp-0.5").mkdir()
    (out / "slerp-0.5" / MARKER).write_text('{"files": []}')   # one written since outputs carry the marker
    (out / "sft" / "clinical-8").mkdir(parents=True)
    (out / "sft" / "clinical-8" / "medmerge_sft.json").write_text("{}")
    cfg, _ = check_run_configs(search=write(tmp_path / "run.yaml", search_cfg(models, out)))
    assert cfg.output_dir == str(out)


# --- finetune --------------------------------------------------------------------------------------------

FINETUNE_CASES = [
    ({"sft": {"per_device_batch": 0}}, "sft.per_device_batch", "greater than or equal to 1 (got 0)"),
    ({"sft": {"grad_accum": 0}}, "sft.grad_accum", "greater than or equal to 1"),
    ({"sft": {"epochs": 0}}, "sft.epochs", "greater than or equal to 1"),
    ({"sft": {"learning_rate": 0}}, "sft.learning_rate", "greater than 0"),
    ({"sft": {"learning_rate": -1e-5}}, "sft.learning_rate", "greater than 0"),
    ({"sft": {"max_length": 0}}, "sft.max_length", "greater than or equal to 1"),
    ({"sft": {"lerning_rate": 1e-4}}, "sft.lerning_rate", "unknown key; did you mean 'learning_rate'?"),
    ({"sft": {"epochs": "many"}}, "sft.epochs", "expected a number, got the string 'many'"),
    ({"generation": {"batch_size": 0}}, "generation.batch_size", "greater than or equal to 1"),
    ({"generation": {"max_new_tokns": 8}}, "generation.max_new_tokns", "did you mean 'max_new_tokens'?"),
    ({"shots": [0, 8, 500]}, "shots", "shots [500] exceed the 64 training examples of mts_dialog [train]"),
    ({"shots": [8, "all"]}, "shots.1", "Input should be 'full' (got 'all')"),
    ({"eval_limit": 0}, "eval_limit", "greater than or equal to 1"),
    ({"forgetting": {"suites": ["clinicl"]}}, "forgetting.suites", "unknown suite 'clinicl'"),
    ({"forgetting": {"limit": 0}}, "forgetting.limit", "greater than or equal to 1"),
    ({"forgetting": {"margin": -0.5}}, "forgetting.margin", "greater than or equal to 0"),
    ({"forgetting": {"suits": ["clinical"]}}, "forgetting.suits", "did you mean 'suites'?"),
    ({"task": "nosuchtask"}, "task", "'nosuchtask' is neither a known task nor an existing file"),
    ({"task": "/nonexistent/notes.jsonl"}, "task", "neither a known task nor an existing file"),
    ({"eval_split": "nosuchsplit"}, "eval_split", None),
    ({"data_dir": "/nonexistent/data"}, "data_dir", "/nonexistent/data"),
    ({"promote": ["clinical-99"]}, "promote", "'clinical-99' names no fine-tuned model of this run"),
    ({"registered_model": "x/../y"}, "registered_model", "registered model name 'x/../y'"),
    ({"tracking_uri": "sqlite:////nonexistent/dir/mlflow.db"}, "tracking_uri", "/nonexistent/dir does not exist"),
    ({"initialisations": [{"name": "clinical", "path": "/nonexistent/model"}]}, "initialisations.0.path",
     "initialisation 'clinical' /nonexistent/model does not exist"),
    ({"initialisations": [{"name": "clinical", "pth": "x"}]}, "initialisations.0.pth", "did you mean 'path'?"),
    ({"initialisations": [{"name": "pick", "model_uri": "models:/a/b/c"}]}, "initialisations.0.model_uri",
     "expected models:/NAME/VERSION or models:/NAME@alias"),
    ({"tasks": [{"task": "mts_dialog", "splitt": "x"}], "task": None}, "tasks.0.splitt", "unknown key"),
    ({"bertscore_model": "/nonexistent/bert"}, "bertscore_model", "BERTScore model /nonexistent/bert does not exist"),
    ({"sft": {"lora": "yes"}}, "sft.lora", "expected true or false, got 'yes'"),
    ({"forgetting": {"device": "cuda:99"}}, "forgetting.device", "CUDA GPU"),
]


@pytest.mark.parametrize("change, key, says", FINETUNE_CASES,
                         ids=[f"{c[1]}-{i}" for i, c in enumerate(FINETUNE_CASES)])
def test_finetune_refuses_a_bad_value_in_one_line(models, work, tmp_path, capsys, change, key, says):
    from pipelines.finetune import main

    cfg = finetune_cfg(models, tmp_path / "out", **change)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path = write(tmp_path / "run.yaml", cfg)
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    assert len(err) == 1, err
    assert err[0].startswith(f"finetune: error: {path}: parameters.config.{key}: "), err
    assert says is None or says in err[0], err


def test_an_initialisation_that_is_a_file_is_named(models, work, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    cfg = finetune_cfg(models, tmp_path / "out", initialisations=[{"name": "c", "path": str(tmp_path / "weights.bin")}])
    with pytest.raises(PreflightError, match=r"initialisations\.0\.path: .*weights\.bin is not a directory"):
        check_run_configs(finetune=write(tmp_path / "run.yaml", cfg))


def test_unknown_keys_outside_the_config_are_named_with_the_nearest(models, work, tmp_path, capsys):
    from pipelines.finetune import main

    path = write(tmp_path / "run.yaml", finetune_cfg(models, tmp_path / "out"), enable_cach=False)
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    assert err == [f"finetune: error: {path}: unknown top-level key 'enable_cach'; did you mean 'enable_cache'?"]
    path.write_text(yaml.safe_dump({"parameters": {"config": finetune_cfg(models, tmp_path / "out"), "confg": {}}}))
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    assert len(err) == 1 and "parameters.confg: unknown key; did you mean 'config'?" in err[0], err
    path.write_text(yaml.safe_dump({"parameter": {"config": finetune_cfg(models, tmp_path / "out")}}))
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    assert len(err) == 1 and "found 'parameter': did you mean 'parameters'?" in err[0], err


def test_every_problem_is_one_line_of_its_own(models, work, tmp_path, capsys):
    """Several mistakes in one file: all named at once, one line each, never a pydantic dump."""
    from pipelines.merge_search import main

    cfg = search_cfg(models, tmp_path / "out", limit=0, eps=-1, registered_model="", tracking_uri="ftp://x",
                     output_dir=".", picks=["nope"], limt=3)
    path = write(tmp_path / "run.yaml", cfg)
    err = refused(main, ["--config", str(path)], tmp_path, capsys)
    keys = [line.split("parameters.config.")[1].split(":")[0] for line in err]
    assert sorted(keys) == sorted(["limit", "eps", "registered_model", "tracking_uri", "output_dir", "picks", "limt"])
    assert not any("validation error" in line or "For further information" in line for line in err)


def test_retrain_and_schedule_check_both_configs_before_anything(models, work, tmp_path, capsys):
    from pipelines.retrain import main as retrain
    from pipelines.schedule import main as schedule

    search = write(tmp_path / "search.yaml", search_cfg(models, tmp_path / "out", limit=0))
    finetune = write(tmp_path / "finetune.yaml", finetune_cfg(models, tmp_path / "ft", sft={"per_device_batch": 0}))
    err = refused(retrain, ["--search-config", str(search), "--finetune-config", str(finetune), "--lock-file",
                            str(tmp_path / "retrain.lock")], tmp_path, capsys)
    assert err == [f"retrain: error: {search}: parameters.config.limit: Input should be greater than or equal to 1 "
                   f"(got 0)",
                   f"retrain: error: {finetune}: parameters.config.sft.per_device_batch: Input should be greater than "
                   f"or equal to 1 (got 0)"]
    err = refused(schedule, ["--cron", "0 3 * * 1", "--search-config", str(search), "--finetune-config",
                             str(finetune), "--crontab-out", str(tmp_path / "retrain.crontab")], tmp_path, capsys)
    assert len(err) == 2 and all(line.startswith("medmerge: error: ") for line in err), err


def test_promote_knee_is_checked_as_the_run_will_see_it(models, work, tmp_path):
    """--promote-knee sets promote: knee; a config whose own promote: is wrong is then no problem."""
    path = write(tmp_path / "run.yaml", search_cfg(models, tmp_path / "out", promote=["nope"]))
    with pytest.raises(PreflightError, match="'nope' names no candidate"):
        check_run_configs(search=path)
    cfg, _ = check_run_configs(search=path, search_overrides={"promote": "knee"})
    assert cfg.promote == "knee"


# --- the demo configurations pass -------------------------------------------------------------------------

@pytest.fixture
def demo_tree(models, tmp_path, monkeypatch) -> Path:
    """A checkout as make demo leaves it: demo_out/models/{base,clinical,instruct} and sweep.yml, with the
    public data beside it (../shared/data) when this machine has it."""
    repo = tmp_path / "repo"
    d = repo / "demo_out" / "models"
    d.mkdir(parents=True)
    for name, src in (("base", "base"), ("clinical", "m0"), ("instruct", "m1")):
        (d / name).symlink_to(models[src], target_is_directory=True)
    (d / "sweep.yml").write_text(yaml.safe_dump({"clinical": str(d / "clinical"), "instruct": str(d / "instruct"),
                                                 "base": str(d / "base"), "methods": ["linear", "slerp"],
                                                 "ratios": [round(i / 10, 1) for i in range(11)]}))
    if SHARED_DATA.is_dir():
        (tmp_path / "shared").mkdir()
        (tmp_path / "shared" / "data").symlink_to(SHARED_DATA, target_is_directory=True)
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return repo


@pytest.mark.parametrize("search", sorted(p.name for p in (ROOT / "zenml_config").glob("merge_search_*.yaml")))
def test_demo_search_configs_pass(demo_tree, search):
    cfg, _ = check_run_configs(search=ROOT / "zenml_config" / search)
    assert cfg.registered_model.startswith("medmerge-demo")
    assert not (demo_tree / cfg.output_dir).exists()   # checked, not created


@pytest.mark.parametrize("finetune", sorted(p.name for p in (ROOT / "zenml_config").glob("finetune_*.yaml")))
def test_demo_finetune_configs_pass(demo_tree, finetune):
    if "tasks" in finetune and not SHARED_DATA.is_dir():
        pytest.skip(f"{finetune} reads the public data ({SHARED_DATA})")
    _, cfg = check_run_configs(finetune=ROOT / "zenml_config" / finetune)
    assert cfg.initialisations and not (demo_tree / cfg.output_dir).exists()


def test_zenml_run_keys_are_zenmls(models):
    """The preflight's list of run-config keys (it must not import ZenML) is ZenML's own."""
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from medmerge.preflight import ZENML_RUN_KEYS

    assert sorted(ZENML_RUN_KEYS) == sorted(PipelineRunConfiguration.model_fields)


# --- a step that fails after the preflight passed: one line (slow: ZenML runs) ----------------------------

@pytest.mark.slow
def test_a_failing_step_is_one_line_with_its_traceback_under_debug(models, work, tmp_path, capfd, monkeypatch):
    """The preflight passes; the first step then fails. A medmerge error reaches the user as
    ``step X failed: <message>``, any other exception as ``step X failed: <ExcType>: <message>``: one line,
    exit 2, no traceback unless --debug."""
    import medmerge.merge.engine
    from medmerge.errors import CompatibilityError
    from pipelines.merge_search import main

    monkeypatch.delenv("MEDMERGE_DEBUG", raising=False)
    cfg = write(tmp_path / "run.yaml", search_cfg(models, tmp_path / "out", experiment="preflight-step",
                                                  tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))

    def parents_that_break(*args, **kwargs):
        raise KeyError("model.layers.7.mlp")   # a bug, say: not a medmerge error

    monkeypatch.setattr(medmerge.merge.engine, "open_parents", parents_that_break)   # steps run in this process
    assert main(["--config", str(cfg)]) == 2
    out = capfd.readouterr()
    err = [line for line in out.err.splitlines() if "error:" in line]
    assert err == ["merge_search: error: step check_parents failed: KeyError: 'model.layers.7.mlp' (run with "
                   "--debug or MEDMERGE_DEBUG=1 for the traceback)"]
    assert "Traceback" not in out.out + out.err   # ZenML's printout of it is left out too

    def parents_incompatible(*args, **kwargs):
        raise CompatibilityError("tensor model.norm.weight: shapes (32,) and (64,) differ")

    monkeypatch.setattr(medmerge.merge.engine, "open_parents", parents_incompatible)
    assert main(["--config", str(cfg), "--debug"]) == 2
    out = capfd.readouterr()
    assert out.err.strip().splitlines()[-1] == ("merge_search: error: step check_parents failed: tensor "
                                                "model.norm.weight: shapes (32,) and (64,) differ")
    assert "Traceback" in out.err or "parents_incompatible" in out.err   # --debug: the step's traceback
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, check", [("merge_search_remote.yaml", "search"), ("finetune_remote.yaml", "finetune")])
def test_remote_configs_pass_without_this_machines_paths(work, config, check):
    """Steps built into images (settings: docker:) see the pod's file system: /scratch and /cache are not checked
    here, every other rule is."""
    path = ROOT / "zenml_config" / "remote" / config
    got = check_run_configs(**{check: path})
    assert got[0 if check == "search" else 1].output_dir.startswith("/scratch/")
    broken = work / config
    broken.write_text(path.read_text().replace("registered_model: medmerge-clinical", "registered_model: a/b", 1))
    with pytest.raises(PreflightError, match=r"parameters\.config\.registered_model: registered model name 'a/b"):
        check_run_configs(**{check: broken})
