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
from steps.finetune_steps import (baseline, evaluate_sft, load_data, resolve_initialisations, sft, subsample, summarise,
                                  validate_data)


def _id(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts)


@pipeline(enable_cache=True)
def finetune(config: FinetuneConfig):
    inits = resolve_initialisations(config)
    data = load_data(config, inits)
    run = validate_data(config, data, inits, build_time_tracking_uri(config.tracking_uri))  # the server: a parameter
    subsets = subsample(config, data)
    checkpoints, results = [], []
    for init in config.initialisations:
        before = baseline(config, inits, init.name, id=_id("baseline", init.name), after=[run])
        for s in config.shots:
            label = shot_label(s)
            ck = sft(config, data, subsets, inits, run, init.name, label, id=_id("sft", init.name, label))
            res = evaluate_sft(config, data, ck, before, run, id=_id("evaluate", init.name, label))
            checkpoints.append(ck)
            results.append(res)
    summary = summarise(config, run, data, inits, checkpoints, results)
    promote_finetuned(config, run, results, summary)


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
    summary = pipeline_run.steps["summarise"].output.load()
    tracking = pipeline_run.steps["validate_data"].output.load()
    uri = tracking.tracking_uri
    print("\nLearning curves (composite = mean of BLEU, METEOR, ROUGE-1/2/L, BERTScore F1):\n")
    print(summary.table)
    if summary.table2:
        print("\nTable 2 (composite per task; shots 0 = no SFT; best per column in bold):\n")
        print(summary.table2)
    failed = [k for k, ok in summary.gate.items() if not ok]
    print(f"\nforgetting gate: {len(summary.gate) - len(failed)}/{len(summary.gate)} passed"
          + (f"; failed (promotion refused): {', '.join(failed)}" if failed else ""))
    print(f"\nMLflow run:        {uri}/#/experiments/{tracking.experiment_id}/runs/{tracking.parent_run_id}")
    print(f"registered model:  {uri}/#/models/{config.registered_model}  versions {summary.versions}")
    decision = pipeline_run.steps["promote_finetuned"].output.load()
    print(decision.summary())
    return {"summary": summary, "tracking": tracking, "config": config, "run": pipeline_run, "promotion": decision}


def main(argv=None) -> int:
    from pipelines._launch import entry_point

    return entry_point("finetune", __doc__, argv, lambda ap: ap.add_argument("--config", required=True),
                       lambda args: run(args.config))


if __name__ == "__main__":
    sys.exit(main())
