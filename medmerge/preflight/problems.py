"""Preflight's errors, the run-config reader, and the problems of one file collected as one line each."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable

from medmerge.errors import MedmergeError


class RunConfigError(MedmergeError):
    """A ZenML run-config YAML cannot be read or lacks ``parameters.config``."""


class PreflightError(MedmergeError):
    """One or more problems in run configurations; ``problems`` holds one line each."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# The keys of a ZenML run configuration (PipelineRunConfiguration's fields; tests/test_preflight.py holds this
# list to ZenML's own). ZenML ignores an unknown one silently, so a typo there would change nothing unseen.
ZENML_RUN_KEYS = (
    "build", "cache_policy", "cleanup_hook_source", "enable_artifact_metadata", "enable_artifact_visualization",
    "enable_cache", "enable_heartbeat", "enable_pipeline_logs", "enable_step_logs", "end_hook_source", "environment",
    "execution_mode", "extra", "failure_hook_source", "init_hook_kwargs", "init_hook_source", "model", "parameters",
    "pause_hook_source", "resume_hook_source", "retry", "run_name", "schedule", "secrets", "settings",
    "start_hook_source", "steps", "substitutions", "success_hook_source", "tags")
PIPELINE_PARAMETERS = ("config",)   # each pipeline takes its whole configuration as one parameter
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
MEDMERGE_FILES = ("medmerge.json", "medmerge_sft.json", ".medmerge-output.json")   # medmerge's records (atomic.MARKER last)
SKIP = object()


def one_line(text: object) -> str:
    """``text`` on one line: its non-empty lines joined with '; '."""
    return "; ".join(s.strip() for s in str(text).splitlines() if s.strip())


def read_run_config(config_path: str | os.PathLike) -> dict:
    """``parameters.config`` of a run-config YAML; errors name the file and what is wrong."""
    doc = read_doc(config_path)
    return doc["parameters"]["config"]


def read_doc(config_path) -> dict:
    from medmerge.io.yaml_file import read_yaml

    try:
        doc = read_yaml(config_path, RunConfigError, "run configuration")
    except RunConfigError as exc:
        raise RunConfigError(one_line(exc)) from None
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("config"), dict):
        near = _nearest("parameters", doc) if isinstance(doc, dict) and "parameters" not in doc else None
        hint = f" (found {near!r}: did you mean 'parameters'?)" if near else ""
        raise RunConfigError(f"{config_path}: expected a mapping under parameters.config (the pipeline's "
                             f"config){hint}")
    return doc


def _nearest(word: str, options: Iterable[str]) -> str | None:
    got = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return got[0] if got else None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    near = _nearest(word, options)
    return f"; did you mean {near!r}?" if near else ""


# ---------------------------------------------------------------------------------------------
# the problems of one file
# ---------------------------------------------------------------------------------------------

class Problems:
    """The lines for one run-config file; ``failed`` holds the top-level keys already found wrong (a later
    check of such a key would only repeat the problem)."""

    def __init__(self, path: str):
        self.path = str(path)
        self.lines: list[str] = []
        self.failed: set[str] = set()
        self.locs: set[tuple] = set()

    def add(self, loc: tuple | str, message: str) -> None:
        loc = (loc,) if isinstance(loc, str) else tuple(loc)
        if loc in self.locs:   # one line per thing
            return
        self.locs.add(loc)
        if loc:
            self.failed.add(str(loc[0]))
        where = ".".join(str(x) for x in ("parameters", "config", *loc))
        message = one_line(message)
        key = str(loc[-1]) if loc else ""
        for prefix in (f"{key}: ", f"{'.'.join(map(str, loc))}: "):   # "picks: picks: ..." says it twice
            if key and message.startswith(prefix):
                message = message[len(prefix):]
        line = f"{self.path}: {where}: {message}"
        if line not in self.lines:
            self.lines.append(line)

    def add_file(self, message: str) -> None:
        line = f"{self.path}: {one_line(message)}"
        if line not in self.lines:
            self.lines.append(line)

    def ok(self, key: str) -> bool:
        return key not in self.failed


