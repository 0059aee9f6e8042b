"""``finetune``: validate data -> few-shot subsets -> per initialisation and shot size: SFT -> generate ->
score -> forgetting check -> learning curves and registration.

    python -m pipelines.finetune --config zenml_config/finetune_demo.yaml [--debug]

The run configuration is checked whole before ZenML loads (:mod:`medmerge.preflight`): each problem one
line, exit 2. A failed step is one line too; ``--debug`` (or ``MEDMERGE_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import re
import sys


def step_id(step: str, task: str | None = None, *parts: str) -> str:
    """A finetune step's name: the step, the task's label when the run has several tasks (``task`` None for a
    one-task run), then its other parts (initialisation, shots), in letters, digits and '_'. Both the pipeline
    (:mod:`pipelines.definitions`) and :func:`run`, which reads the steps' outputs, name steps with it."""
    return "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in (step, *((task,) if task else ()), *parts))


def __getattr__(name: str):
    """``finetune``, the ZenML pipeline (:mod:`pipelines.definitions`), imported on first use: the preflight
    runs before ZenML loads."""
    if name == "finetune":
        from pipelines.definitions import finetune

        return finetune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_config(config_path: str):
    """The run configuration, through the preflight: every problem of it one line (PreflightError)."""
    from medmerge.preflight import check_run_configs

    return check_run_configs(finetune=config_path)[1]


def run(config_path: str) -> dict:
    """Run the pipeline from a ZenML run-config YAML; print the learning curves and where to look."""
    from medmerge.tracking.registry import check_reachable

    config = load_config(config_path)   # the preflight, before ZenML is imported
    check_reachable(config.resolved_tracking_uri())
    from pipelines._launch import launch

    pipeline_run = launch(sys.modules[__name__].finetune, config_path)
    out = {"config": config, "run": pipeline_run, "tasks": {}}
    for task, cfg in config.task_configs():
        summary = pipeline_run.steps[step_id("summarise", task)].output.load()
        tracking = pipeline_run.steps[step_id("validate_data", task)].output.load()
        decision = pipeline_run.steps[step_id("promote_finetuned", task)].output.load()
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
        out["tasks"][cfg.task_label] = {"summary": summary, "tracking": tracking, "promotion": decision}
        if not task:
            out.update(summary=summary, tracking=tracking, promotion=decision)
    if len(config.tasks) > 1:
        cross = pipeline_run.steps[step_id("compare_tasks")].output.load()
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
