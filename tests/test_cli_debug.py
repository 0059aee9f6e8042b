"""``--debug`` (or MEDMERGE_DEBUG=1) reaches the process ``medmerge schedule`` starts, so a bug report from a
scheduled pipeline shows its traceback too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from medmerge.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, expected", [(["--debug"], "1"), ([], None)])
def test_schedule_forwards_debug_to_the_pipeline_process(argv, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MEDMERGE_DEBUG", raising=False)
    seen = {}

    def fake_run(args, **kw):
        seen["argv"], seen["env"] = args, kw.get("env") or {}
        return subprocess.CompletedProcess(args, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    rc = main([*argv, "schedule", "--cron", "0 3 * * 1", "--crontab-out", str(tmp_path / "retrain.crontab"),
               "--log", str(tmp_path / "retrain.log")])
    assert rc == 0
    assert seen["argv"][1:3] == ["-m", "pipelines.schedule"]
    assert seen["env"].get("MEDMERGE_DEBUG") == expected
