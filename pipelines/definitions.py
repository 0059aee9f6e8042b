"""The two ZenML pipelines, composed from the steps in ``steps/`` (no logic of their own).

The entry points (``python -m pipelines.merge_search``, ``pipelines.finetune``) import this module only
after the preflight has passed, so a bad run configuration is named before ZenML loads.
"""

from __future__ import annotations

from zenml import pipeline

from medmerge.finetune import FinetuneConfig, shot_label
from medmerge.search import SearchConfig
from pipelines._launch import build_time_tracking_uri
from pipelines.finetune import step_id
from steps.finetune_steps import (baseline, compare_tasks, evaluate_sft, load_data, resolve_initialisations, sft,
                                  subsample, summarise, validate_data)
from steps.merge_search_steps import (check_parents, evaluate_candidates, log_search, register_selected,
                                      select_frontier, write_selected)
from steps.promotion_steps import choose_picks, promote, promote_finetuned


@pipeline(enable_cache=True)
def merge_search(config: SearchConfig):
    """compatibility -> in-memory sweep + evaluation -> frontier -> picks -> write picks -> log -> register ->
    promote."""
    parents = check_parents(config)
    results = evaluate_candidates(config, parents)
    frontier = select_frontier(config, results)
    picks = choose_picks(config, results, frontier)   # a bad pick fails here: nothing written or registered
    checkpoints = write_selected(config, results, frontier, after=[picks])
    # these two and promote are the steps that touch MLflow; the server is log_search's parameter and its output
    # carries it on, so another server re-runs just these three
    logged = log_search(config, results, build_time_tracking_uri(config.tracking_uri))
    versions = register_selected(config, logged, frontier, checkpoints)
    promote(config, logged, frontier, picks, versions)


@pipeline(enable_cache=True)
def finetune(config: FinetuneConfig):
    """validate data -> few-shot subsets -> per initialisation and shot size: SFT -> generate -> score ->
    forgetting check -> learning curves, registration and promotion."""
    inits = resolve_initialisations(config)
    all_results = []
    # one task: the step names of old (sft_<init>_<shots>); several: each task's steps carry its name
    for task, cfg in config.task_configs():
        def sid(*parts: str) -> str:
            return step_id(parts[0], *((task,) if task else ()), *parts[1:])

        data = load_data(cfg, inits, id=sid("load_data"))
        run = validate_data(cfg, data, inits, build_time_tracking_uri(cfg.tracking_uri),  # the server: a parameter
                            id=sid("validate_data"))
        subsets = subsample(cfg, data, id=sid("subsample"))
        checkpoints, results = [], []
        for init in cfg.initialisations:
            before = baseline(cfg, inits, init.name, id=sid("baseline", init.name), after=[run])
            for s in cfg.shots:
                label = shot_label(s)
                ck = sft(cfg, data, subsets, inits, run, init.name, label, id=sid("sft", init.name, label))
                res = evaluate_sft(cfg, data, ck, before, run, id=sid("evaluate", init.name, label))
                checkpoints.append(ck)
                results.append(res)
        summary = summarise(cfg, run, data, inits, checkpoints, results, id=sid("summarise"))
        promote_finetuned(cfg, run, results, summary, id=sid("promote_finetuned"))
        all_results.extend(results)
    if config.tasks:
        compare_tasks(config, all_results, build_time_tracking_uri(config.tracking_uri))
