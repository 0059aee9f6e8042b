"""Learning curves, the forgetting table, Table 2, cost.md and one registered version per fine-tuned model."""

from __future__ import annotations

from pathlib import Path

from medmerge.finetune.artifacts import FinetuneSummary, InitModel, SFTCheckpoint, SFTResult, TrackingRun, TrainingData
from medmerge.finetune.config import ZERO_SHOT, FinetuneConfig
from medmerge.io.tables import text_table
from medmerge.runtime import cost
from medmerge.runtime.cost import measured


def learning_curves(results: list[SFTResult], metric: str = "composite") -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    for r in results:
        curves.setdefault(r.init, {})[r.n_examples] = r.scores[metric]
    return {k: dict(sorted(v.items())) for k, v in curves.items()}


def curve_table(results: list[SFTResult], metric: str = "composite") -> str:
    """Rows: initialisations; columns: shot sizes; cells: the metric (the learning-curve table)."""
    shots: list[str] = []
    for r in results:
        if r.shots not in shots:
            shots.append(r.shots)
    shots.sort(key=lambda s: (s == "full", int(s) if s != "full" else 0))
    inits = list(dict.fromkeys(r.init for r in results))
    cell = {(r.init, r.shots): r for r in results}
    rows = [[f"{metric} \\ shots"] + shots]
    for i in inits:
        row = [i]
        for s in shots:
            got = cell.get((i, s))
            row.append("" if got is None else f"{got.scores[metric]:.4f}" + ("" if got.forgetting.passed else " (forgot)"))
        rows.append(row)
    return text_table(rows)


def forgetting_table(results: list[SFTResult]) -> str:
    out = []
    for r in results:
        status = "passed" if r.forgetting.passed else "FAILED"
        out.append(f"## {r.init} after SFT on {r.shots} examples: forgetting gate {status} "
                   f"(margin {r.forgetting.margin})\n\n```\n{r.forgetting.table()}\n```\n")
    return "\n".join(out)


def _failure_text(r: SFTResult) -> str:
    return "; ".join(f"{c.score} {c.before:.4f} -> {c.after:.4f} (drop {c.drop:.4f} > allowed {c.allowed:.4f})"
                     for c in r.forgetting.failures)


def cost_table(cfg: FinetuneConfig, run: TrackingRun, checkpoints: list[SFTCheckpoint]) -> str:
    """``cost.md``: the merge search behind the registered initialisations against each SFT run (merge vs SFT)."""
    sweep = cost.sweep_row(run.tracking_uri, [i.model_uri for i in cfg.initialisations if i.model_uri])
    sft = cost.sft_rows(run.tracking_uri, [(f"{k.init}-{k.shots}", k.run_id, k.steps) for k in checkpoints if k.steps])
    return cost.cost_table(sweep, sft)


def plot_curves(results: list[SFTResult], path: Path, task: str) -> Path:
    """One task's learning-curve figure (x: training examples, shots 0 left out: it is no SFT; points that
    failed the forgetting gate marked)."""
    from medmerge.selection import figures

    full = {r.init: r.n_examples for r in results if r.shots == "full"}
    forgot: dict[str, set[int]] = {}
    for r in results:
        if not r.forgetting.passed:
            forgot.setdefault(r.init, set()).add(r.n_examples)
    trained = {i: {n: v for n, v in pts.items() if n} for i, pts in learning_curves(results).items()}
    return figures.plot_learning_curves(trained, path, full_sizes=full, title=f"{task}: composite score after SFT",
                                        forgot=forgot)


@measured("summarise", run=lambda a: (a["run"].tracking_uri, a["run"].parent_run_id))
def summarise_and_register(cfg: FinetuneConfig, run: TrackingRun, checkpoints: list[SFTCheckpoint],
                           results: list[SFTResult], figures_dir: str | Path,
                           data: TrainingData | None = None,
                           inits: dict[str, InitModel] | None = None) -> FinetuneSummary:
    """Learning curves (figure + table), the forgetting table, one registered version per fine-tuned
    model tagged with its gate. The promote step after it closes the parent run (a rerun of this step after
    that logs to a nested run: a closed parent run is never written again)."""
    from medmerge.finetune import table2
    from medmerge.tracking import registry

    parent = run.parent_run().open_or_nested("summary")
    curves = learning_curves(results)
    fig = plot_curves(results, Path(figures_dir) / "learning_curves.png", cfg.task_label)
    table, ftable = curve_table(results), forgetting_table(results)
    parent.artifact(fig, "figures")
    parent.text(table + "\n", "learning_curves.txt")
    parent.json({i: {str(k): v for k, v in pts.items()} for i, pts in curves.items()}, "learning_curves.json")
    parent.text(ftable, "forgetting.md")
    t2 = table2.build({cfg.task_label: results})
    parent.text(table2.to_markdown(t2), "table2.md")
    parent.json(t2, "table2.json")
    parent.text(cost_table(cfg, run, checkpoints), "cost.md")
    by_key = {(k.init, k.shots): k for k in checkpoints}
    versions, gate = {}, {}
    for r in results:
        ck = by_key[(r.init, r.shots)]
        key = f"{r.init}-{r.shots}"
        if r.shots == ZERO_SHOT:   # no SFT: nothing new to register
            gate[key] = r.forgetting.passed
            continue
        tags = {"initialisation": r.init, "shots": r.shots, "n_examples": r.n_examples, "task": cfg.task_label,
                **{k: f"{v:.6f}" for k, v in r.scores.items()},
                **{k: s.value for k, s in r.after.scores.items()},   # the forgetting re-check's suite scores
                "forgetting_gate": "passed" if r.forgetting.passed else "failed"}
        if data is not None:  # what a retrain compares with: the data and the initialisation it was made from
            tags["train_sha256"] = data.train_sha256
        if inits is not None and r.init in inits:
            tags["init_sha256"] = inits[r.init].sha256
        if not r.forgetting.passed:
            tags["forgetting_failures"] = _failure_text(r)
        reg = registry.register_checkpoint(cfg.registered_model, Path(ck.path), ck.run_id, ck.identity, tags,
                                           run.tracking_uri)
        if reg.reused:  # same model, re-measured: its gate tags follow the latest measurement
            registry.set_version_tags(cfg.registered_model, reg.version, run.tracking_uri,
                                      {k: tags[k] for k in ("forgetting_gate", "forgetting_failures") if k in tags},
                                      drop=() if "forgetting_failures" in tags else ("forgetting_failures",))
        versions[key] = reg.version
        gate[key] = r.forgetting.passed
    parent.json(versions, "registered_versions.json")
    parent.metric("forgetting_gate_failures", sum(not g for g in gate.values()))   # promote_finetuned, the last
                                                                                     # step, closes the parent
    return FinetuneSummary(table=table, forgetting_table=ftable, curves=curves, versions=versions, gate=gate,
                           table2=table2.to_markdown(t2),
                           figures={"learning_curves": str(fig)})
