"""The two ZenML pipelines, composed from the steps in ``steps/`` (no logic of their own).

The entry points (``python -m pipelines.merge_search``, ``pipelines.finetune``) import this module only
after the preflight has passed, so a bad run configuration is named before ZenML loads.
"""

from __future__ import annotations

from zenml import pipeline

from medmerge.finetune import FinetuneConfig, shot_label
from medmerge.selection.search import SearchConfig
from pipelines._launch import build_time_tracking_uri
from pipelines.finetune import step_id
from steps.fanout_steps import train_in_parallel
from steps.finetune_steps import (
    baseline,
    compare_tasks,
    evaluate_sft,
    load_data,
    resolve_initialisations,
    sft,
    subsample,
    summarise,
    validate_data,
)
from steps.merge_search_steps import (
    check_parents,
    evaluate_candidates,
    log_search,
    register_selected,
    select_frontier,
    write_selected,
)
from steps.promotion_steps import choose_picks, promote, promote_finetuned


@pipeline(enable_cache=True)
def merge_search(config: SearchConfig):
    """compatibility -> in-memory sweep + evaluation -> frontier -> picks -> write picks -> log -> register ->
    promote."""
    # `workers` changes how fast, not what: it goes to the evaluation step as step metadata (`extra`, not part
    # of ZenML's cache key) and every step gets the config with workers: 1, so the cache keys do not depend on it
    workers, config = config.workers, config.model_copy(update={"workers": 1})
    parents = check_parents(config)
    results = evaluate_candidates.with_options(extra={"workers": workers})(config, parents)
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
    # as in merge_search: `workers` reaches only the step that trains in parallel, as its `extra`
    workers, config = config.workers, config.model_copy(update={"workers": 1})
    inits = resolve_initialisations(config)
    all_results = []
    # one task: the step names of old (sft_<init>_<shots>); several: each task's steps carry its name
    for task, cfg in config.task_configs():
        data = load_data(cfg, inits, id=step_id("load_data", task))
        run = validate_data(cfg, data, inits, build_time_tracking_uri(cfg.tracking_uri),  # the server: a parameter
                            id=step_id("validate_data", task))
        subsets = subsample(cfg, data, id=step_id("subsample", task))
        # workers > 1: the SFT runs trained side by side first; each sft step then finds its checkpoint finished
        trained = [train_in_parallel.with_options(extra={"workers": workers})(
            cfg, data, subsets, inits, id=step_id("train_in_parallel", task))] if workers > 1 else None
        checkpoints, results = [], []
        for init in cfg.initialisations:
            before = baseline(cfg, inits, init.name, id=step_id("baseline", task, init.name), after=[run])
            for s in cfg.shots:
                label = shot_label(s)
                ck = sft(cfg, data, subsets, inits, run, init.name, label, id=step_id("sft", task, init.name, label),
                         after=trained)
                res = evaluate_sft(cfg, data, ck, before, run, id=step_id("evaluate", task, init.name, label))
                checkpoints.append(ck)
                results.append(res)
        summary = summarise(cfg, run, data, inits, checkpoints, results, id=step_id("summarise", task))
        promote_finetuned(cfg, run, results, summary, id=step_id("promote_finetuned", task))
        all_results.extend(results)
    if len(config.tasks) > 1:
        compare_tasks(config, all_results, build_time_tracking_uri(config.tracking_uri), id=step_id("compare_tasks"))
