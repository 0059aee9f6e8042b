"""``finetune``: validate data -> few-shot subsets -> per initialisation and shot size: SFT -> generate ->
score -> forgetting check -> learning curves and registration.

    python -m pipelines.finetune --config zenml_config/finetune_demo.yaml
"""

from __future__ import annotations

import re
import sys

from zenml import pipeline

from medmerge.finetune import FinetuneConfig, shot_label
from pipelines._launch import build_time_tracking_uri
from steps.promotion_steps import promote_finetuned
from steps.finetune_steps import (baseline, compare_tasks, evaluate_sft, load_data, resolve_initialisations, sft,
                                  subsample, summarise, validate_data)


def _id(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts)


@pipeline(enable_cache=True)
def finetune(config: FinetuneConfig):
    inits = resolve_initialisations(config)
    all_results = []
    # one task: the step names of old (sft_<init>_<shots>); several: each task's steps carry its name
    for task, cfg in config.task_configs():
        def sid(*parts: str) -> str:
            return _id(parts[0], *((task,) if task else ()), *parts[1:])

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


def load_config(config_path: str) -> FinetuneConfig:
    from pipelines._launch import read_run_config

    return FinetuneConfig.model_validate(read_run_config(config_path))  # errors name the bad field before ZenML starts


def run(config_path: str) -> dict:
    """Run the pipeline from a ZenML run-config YAML; print the learning curves and where to look."""
    from medmerge.tracking.registry import check_reachable

    config = load_config(config_path)
    check_reachable(config.resolved_tracking_uri())
    from pipelines._launch import launch

    pipeline_run = launch(finetune, config_path)
    out = {"config": config, "run": pipeline_run, "tasks": {}}
    for task, cfg in config.task_configs():
        name = (lambda step: f"{step}_{_id(task)}") if task else (lambda step: step)
        summary = pipeline_run.steps[name("summarise")].output.load()
        tracking = pipeline_run.steps[name("validate_data")].output.load()
        decision = pipeline_run.steps[name("promote_finetuned")].output.load()
        uri = tracking.tracking_uri
        print(f"\n== task {task} ==" if task else "")
        print("\nLearning curves (composite = mean of BLEU, METEOR, ROUGE-1/2/L, BERTScore F1):\n")
        print(summary.table)
        if summary.table2 and not task:
            print("\nTable 2 (composite per task; shots 0 = no SFT; best per column in bold):\n")
            print(summary.table2)
        failed = [k for k, ok in summary.gate.items() if not ok]
        print(f"\nforgetting gate: {len(summary.gate) - len(failed)}/{len(summary.gate)} passed"
              + (f"; failed (promotion refused): {', '.join(failed)}" if failed else ""))
        print(f"\nMLflow run:        {uri}/#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}")
        print(f"registered model:  {uri}/#/models/{cfg.registered_model}  versions {summary.versions}")
        print(decision.summary())
        out["tasks"][task or cfg.task] = {"summary": summary, "tracking": tracking, "promotion": decision}
        if not task:
            out.update(summary=summary, tracking=tracking, promotion=decision)
    if config.tasks:
        cross = pipeline_run.steps["compare_tasks"].output.load()
        print("\nTable 2 across tasks (composite; shots 0 = no SFT; best per column in bold):\n")
        print(cross.table2)
        print(f"MLflow run:        {cross.run.tracking_uri}/#/experiments/{cross.run.experiment_id}/runs/"
              f"{cross.run.parent_run_id}")
        out["table2"] = cross
    return out


def main(argv=None) -> int:
    from pipelines._launch import entry_point

    return entry_point("finetune", __doc__, argv, lambda ap: ap.add_argument("--config", required=True),
                       lambda args: run(args.config))


if __name__ == "__main__":
    sys.exit(main())
