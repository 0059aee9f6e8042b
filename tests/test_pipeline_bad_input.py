"""Bad run configurations for both pipelines: one clear line naming the problem, exit 2, nothing run or written."""

from __future__ import annotations

import pytest
import yaml

GOOD_FT = {"initialisations": [{"name": "clinical", "path": "demo_out/models/clinical"}], "data_dir": "sample",
           "output_dir": "OUT"}


def write(tmp_path, text: str):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, message", [
    ("parameters: {config: [unclosed", "not valid YAML"),
    ("enable_cache: true\n", "expected a mapping under parameters.config"),
    ("parameters:\n  config: 3\n", "expected a mapping under parameters.config"),
    (yaml.safe_dump({"parameters": {"config": {**GOOD_FT, "sft": {"lerning_rate": 1e-4}}}}), "lerning_rate"),
    (yaml.safe_dump({"parameters": {"config": {**GOOD_FT, "shots": [8, "all"]}}}), "shots"),
    (yaml.safe_dump({"parameters": {"config": {**GOOD_FT, "initialisations": []}}}), "at least one initialisation"),
])
def test_finetune_rejects_bad_run_config(tmp_path, capsys, text, message):
    from pipelines.finetune import main

    assert main(["--config", write(tmp_path, text.replace("OUT", str(tmp_path / "out")))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("finetune: error:") and message in err
    assert not (tmp_path / "out").exists()


def test_missing_run_config_is_named(tmp_path, capsys):
    from pipelines.finetune import main as ft
    from pipelines.merge_search import main as ms

    for main, name in ((ft, "finetune"), (ms, "merge_search")):
        assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
        assert f"run configuration {tmp_path / 'nope.yaml'} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("sweep, message", [
    ({"clinical": "a", "instruct": "b", "methods": ["linear", "frobnicate"], "ratios": [0.5]}, "frobnicate"),
    ({"clinical": "a", "instruct": "b", "methods": ["linear"], "ratios": [1.5]}, "ratio"),
])
def test_merge_search_rejects_bad_sweep(tmp_path, capsys, sweep, message):
    from pipelines.merge_search import main

    cfg = {"parameters": {"config": {"sweep": sweep, "output_dir": str(tmp_path / "out")}}}
    assert main(["--config", write(tmp_path, yaml.safe_dump(cfg))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("merge_search: error:") and message in err
    assert not (tmp_path / "out").exists()
