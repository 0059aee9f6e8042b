"""Merge search, the first phase end to end (the core the ZenML steps call; no ZenML here).

check compatibility -> sweep in memory and evaluate each candidate (one MLflow parent run,
a nested run per candidate) -> Pareto selection (frontier, near set, knee, figures) -> write
only the selected checkpoints -> register them. Each function is one step's work.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medmerge.evaluation.report import EvalReport
from medmerge.evaluation.runner import EvalOptions
from medmerge.recipe import Recipe, SweepSpec, load_sweep


class SearchConfig(EvalOptions):
    """The run configuration of ``merge_search`` (YAML under ``zenml_config/``); the evaluation fields
    (suites, data_dir, limit, ...) come from :class:`EvalOptions`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sweep: SweepSpec
    eps: float = 0.0
    use_stderr: bool = False
    output_dir: str = "merge_search_out"
    registered_model: str = "medmerge-clinical"
    experiment: str = "medmerge-merge-search"
    tracking_uri: str | None = None

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep_path(cls, v):
        return load_sweep(v) if isinstance(v, (str, Path)) else v

    @model_validator(mode="after")
    def _output_apart_from_parents(self):
        from medmerge.io.atomic import refuse_aliased_output

        refuse_aliased_output(self.output_dir, self.sweep.parent_refs, "parent model", may_contain=True)
        return self

    def resolved_tracking_uri(self) -> str:
        from medmerge.tracking.registry import resolve_tracking_uri

        return resolve_tracking_uri(self.tracking_uri)


class CandidateResult(BaseModel):
    name: str
    method: str
    ratio: float
    recipe: Recipe
    identity: str
    run_id: str
    report: EvalReport


class SearchResults(BaseModel):
    """What the evaluation step hands on: the MLflow runs and every candidate's report."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    parents: dict[str, dict]          # ref -> {path, weights: {file: sha256}}
    candidates: list[CandidateResult]

    def by_name(self) -> dict[str, CandidateResult]:
        return {c.name: c for c in self.candidates}


class Frontier(BaseModel):
    """The selection: frontier, near set, knee and hypervolume, with the figures' paths."""

    selection: dict
    frontier: list[str]
    near: list[str]
    knee: str
    hypervolume: float | None
    table: str
    figures: dict[str, str] = Field(default_factory=dict)


class CheckpointDir(BaseModel):
    """A merged checkpoint directory and what identifies it."""

    name: str
    path: str
    identity: str
    run_id: str


def check_parents(cfg: SearchConfig) -> dict[str, dict]:
    """Open and check the parents (errors name the first offending thing); return their weight hashes."""
    from medmerge.engine import open_parents, parent_provenance

    spec = cfg.sweep
    refs = [spec.clinical, spec.instruct] + ([spec.base] if spec.base else [])
    return parent_provenance(open_parents(refs))


def evaluate_and_log(cfg: SearchConfig, parents: dict[str, dict], run_name: str | None = None) -> SearchResults:
    """Evaluate every candidate in memory; log a parent run and a nested run per candidate. A rerun of a run
    that did not finish (killed, say) logs into its parent run and keeps its finished candidate runs."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.sweep_eval import evaluate_sweep
    from medmerge.tracking import registry

    uri = cfg.resolved_tracking_uri()
    registry.check_reachable(uri)
    # one "View run" line per candidate would bury the frontier table; the pipeline prints the parent's URL
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    c = registry.client(uri)
    exp = c.get_experiment_by_name(cfg.experiment)
    exp_id = exp.experiment_id if exp else c.create_experiment(cfg.experiment)
    pid, logged = _open_parent_run(c, exp_id, cfg, parents, run_name or "merge_search")
    try:
        c.log_param(pid, "sweep", json.dumps(cfg.sweep.model_dump(mode="json"))[:500])
        for k in ("suites", "limit", "eps", "data_dir", "registered_model"):
            c.log_param(pid, k, str(getattr(cfg, k)))
        c.log_dict(pid, parents, "parents.json")
        results = []
        for cand, report in evaluate_sweep(cfg.sweep, cfg.eval_settings(), EvalCache()):
            identity = report.model_fingerprint.removeprefix("candidate:")
            rid = logged.get(cand.name) or registry.log_candidate(pid, exp_id, cand.name, cand.recipe, report, uri)
            results.append(CandidateResult(name=cand.name, method=cand.method, ratio=cand.ratio, recipe=cand.recipe,
                                           identity=identity, run_id=rid, report=report))
    except BaseException:
        c.set_terminated(pid, status="FAILED")
        raise
    return SearchResults(tracking_uri=uri, experiment_id=exp_id, parent_run_id=pid, parents=parents,
                         candidates=results)


def _open_parent_run(c, exp_id: str, cfg: SearchConfig, parents: dict[str, dict],
                     run_name: str) -> tuple[str, dict[str, str]]:
    """The parent run of an unfinished (say killed) run of the same config and parents, resumed, with its
    finished candidate runs ``{name: run_id}`` (a half-logged one is deleted: it is logged again); else a new
    parent run and ``{}``."""
    import hashlib

    key = hashlib.sha256(json.dumps({"config": cfg.model_dump(mode="json"), "parents": parents},
                                    sort_keys=True).encode()).hexdigest()[:32]
    for r in c.search_runs([exp_id], filter_string=f"tags.`medmerge.run_key` = '{key}'", max_results=5):
        if r.info.status != "FINISHED":
            pid = r.info.run_id
            c.update_run(pid, status="RUNNING")
            logged = {}
            for n in c.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{pid}'", max_results=1000):
                if n.info.status == "FINISHED" and "candidate" in n.data.tags:
                    logged[n.data.tags["candidate"]] = n.info.run_id
                else:
                    c.delete_run(n.info.run_id)
            return pid, logged
    run = c.create_run(exp_id, run_name=run_name, tags={"medmerge.phase": "merge_search", "medmerge.run_key": key})
    return run.info.run_id, {}


def _points(results: SearchResults):
    from medmerge.pareto import Candidate as Point

    pts = []
    for c in results.candidates:
        r = c.report
        if r.medical_avg is None or r.if_score is None:
            raise ValueError("Pareto selection needs both the clinical and ifeval suites")
        pts.append(Point(name=c.name, medical_avg=r.medical_avg, if_score=r.if_score, method=c.method, ratio=c.ratio))
    return pts


def select_frontier(results: SearchResults, cfg: SearchConfig, figures_dir: str | Path) -> Frontier:
    """Frontier, ε-near set, knee and hypervolume (reference: the worse parent); figures logged to MLflow."""
    from medmerge import figures, pareto
    from medmerge.tracking import registry

    pts = _points(results)
    ends = {"clinical": next((p for p in pts if p.ratio == 0.0), None),
            "instruct": next((p for p in pts if p.ratio == 1.0), None)}
    parents = {k: (v.if_score, v.medical_avg) for k, v in ends.items() if v is not None}
    sel = pareto.select(pts, eps=cfg.eps, use_stderr=cfg.use_stderr, parents=parents if len(parents) == 2 else None)
    figures_dir = Path(figures_dir)
    fig_f = figures.plot_frontier(pts, figures_dir / "frontier.png", parents=parents or None, selection=sel,
                                  title="Medical Avg vs IF score")
    fig_t = figures.plot_trajectories(pts, figures_dir / "trajectories.png", title="Scores along the ratio")
    c = registry.client(results.tracking_uri)
    for f in (fig_f, fig_t):
        c.log_artifact(results.parent_run_id, str(f), "figures")
    c.log_text(results.parent_run_id, sel.table(), "frontier.txt")
    c.log_dict(results.parent_run_id, sel.to_dict(), "frontier.json")
    if sel.hypervolume is not None:
        c.log_metric(results.parent_run_id, "hypervolume", sel.hypervolume)
    return Frontier(selection=sel.to_dict(), frontier=[p.name for p in sel.frontier], near=[p.name for p in sel.near],
                    knee=sel.knee.name, hypervolume=sel.hypervolume, table=sel.table(),
                    figures={"frontier": str(fig_f), "trajectories": str(fig_t)})


def write_selected(cfg: SearchConfig, results: SearchResults, frontier: Frontier) -> list[CheckpointDir]:
    """Write only the selected (near-frontier) candidates, each atomically, reading parents once."""
    from medmerge.engine import open_parents, plan_merge, write_plans

    by = results.by_name()
    chosen = [by[n] for n in frontier.near]
    out = Path(cfg.output_dir)
    todo = [c for c in chosen if not (out / c.name / "medmerge.json").exists()]
    if todo:
        spec = cfg.sweep
        refs = [spec.clinical, spec.instruct] + ([spec.base] if spec.base else [])
        parents = open_parents(refs)
        plans = [plan_merge(c.recipe, parents) for c in todo]
        write_plans(plans, [out / c.name for c in todo], overwrite=True, quiet=True, desc="writing selected")
    return [CheckpointDir(name=c.name, path=str((out / c.name).resolve()), identity=c.identity, run_id=c.run_id)
            for c in chosen]


def register_selected(cfg: SearchConfig, results: SearchResults, frontier: Frontier,
                      checkpoints: list[CheckpointDir]) -> dict[str, str]:
    """Register each written checkpoint (no duplicates); close the parent run. Returns {candidate: version}."""
    from medmerge.tracking import registry

    by = results.by_name()
    fingerprint = json.dumps({r: p["weights"] for r, p in sorted(results.parents.items())}, sort_keys=True)
    versions = {}
    for ck in checkpoints:
        cand = by[ck.name]
        tags = {**cand.recipe.tags(), "candidate": ck.name, "medical_avg": cand.report.medical_avg,
                "if_score": cand.report.if_score, "parents_sha256": fingerprint,
                "knee": str(ck.name == frontier.knee)}
        reg = registry.register_checkpoint(cfg.registered_model, Path(ck.path), ck.run_id, ck.identity, tags,
                                           results.tracking_uri)
        versions[ck.name] = reg.version
    c = registry.client(results.tracking_uri)
    c.log_dict(results.parent_run_id, versions, "registered_versions.json")
    c.set_terminated(results.parent_run_id, status="FINISHED")
    return versions
