"""The merge_search steps. Each is a few lines around one ``medmerge.selection.search`` function."""

from __future__ import annotations

import tempfile
from typing import Annotated

from zenml import get_step_context, step

import materializers  # noqa: F401  (registers the medmerge materializers)
from medmerge.selection import search
from medmerge.selection.search import CheckpointDir, Frontier, SearchConfig, SearchResults
from steps.failure import claim_registrations, fail_tracked_runs


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def check_parents(config: SearchConfig) -> Annotated[dict, "parents"]:
    """In: the run config. Out: each parent's weight-file sha256. Fails naming the first incompatibility.

    Never cached: it re-hashes the weights (fast: hashes are cached by file size and mtime), and the
    later steps are cached on that output's content, so a changed parent re-runs them."""
    return search.check_parents(config)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def evaluate_candidates(config: SearchConfig, parents: dict) -> Annotated[SearchResults, "evaluation_reports"]:
    """In: config, parent hashes; the number of local workers in the step's ``extra`` (not in its cache key).
    Out: every candidate's report, evaluated in memory (no MLflow)."""
    return search.evaluate(config, parents, workers=get_step_context().step_run.config.extra.get("workers", 1))


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def select_frontier(config: SearchConfig, results: SearchResults) -> Annotated[Frontier, "frontier"]:
    """In: reports. Out: frontier, near set, knee, hypervolume and figures."""
    return search.select_frontier(results, config, tempfile.mkdtemp(prefix="medmerge-figures-"))


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def log_search(config: SearchConfig, results: SearchResults,
               tracking_uri: str | None = None) -> Annotated[SearchResults, "logged_results"]:
    """In: reports, the tracking server resolved when the pipeline was built (a parameter, so part of the cache
    key: another server re-runs this step). Out: the reports with their MLflow runs (parent + nested, figures)."""
    return search.log_search(config, results, tracking_uri, run_name=get_step_context().pipeline_run.name)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def write_selected(config: SearchConfig, results: SearchResults,
                   frontier: Frontier) -> Annotated[list[CheckpointDir], "selected_checkpoints"]:
    """In: the selection. Out: only the selected candidates, written atomically."""
    return search.write_selected(config, results, frontier)


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def register_selected(config: SearchConfig, results: SearchResults, frontier: Frontier,
                      checkpoints: list[CheckpointDir]) -> Annotated[dict, "registered_versions"]:
    """In: written checkpoints, the logged runs. Out: {candidate: registered version} (no duplicates on re-runs)."""
    return search.register_selected(config, results, frontier, checkpoints)
