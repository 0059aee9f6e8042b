"""Merge search, the first phase end to end (the core the ZenML steps call; no ZenML here).

check compatibility -> sweep in memory and evaluate each candidate -> Pareto selection (frontier,
near set, knee, figures) -> write only the selected checkpoints -> log to MLflow (one parent run, a
nested run per candidate, the figures) -> register them. Each function is one step's work. Only the
last two touch MLflow, so pointing the pipeline at another tracking server re-runs only them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from medmerge.errors import as_value_error, not_blank
from medmerge.evaluation.objectives import DEFAULT_OBJECTIVES, values_of
from medmerge.evaluation.report import EvalReport
from medmerge.evaluation.runner import PROMPT_FORMAT, EvalOptions
from medmerge.merge.recipe import Recipe, SweepCandidate, SweepSpec, load_sweep, parse_sweep
from medmerge.runtime import cost
from medmerge.runtime.cost import measured
from medmerge.selection.pareto import SelectionSummary
from medmerge.selection.race_search import RacingOptions
from medmerge.tracking.runs import HasParentRun


class SearchConfig(EvalOptions):
    """The run configuration of ``merge_search`` (YAML under ``zenml_config/``); the evaluation fields
    (suites, data_dir, limit, ...) come from :class:`EvalOptions`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sweep: SweepSpec
    eps: float = Field(0.0, ge=0.0, allow_inf_nan=False)   # the near set's margin, in the objectives' units
    use_stderr: bool = False
    output_dir: str = "merge_search_out"
    registered_model: str = "medmerge-clinical"
    experiment: str = "medmerge-merge-search"
    tracking_uri: str | None = None
    # the Pareto selection's two objectives (x, y), any two suite scores (medmerge.evaluation.objectives)
    objectives: tuple[str, str] = Field(DEFAULT_OBJECTIVES, validate_default=True)   # the default needs suites
    # where search: optuna keeps its study (a SQLAlchemy URL); None: a sqlite file beside the local
    # MLflow store when the tracking server is the one `medmerge server start` runs, else in output_dir
    study_storage: str | None = None
    # phase two's initialisations, each under an alias pick-<method> (medmerge.selection.promotion):
    # best_per_method, knee, near_frontier, or a list of candidate names
    picks: str | tuple[str, ...] = "best_per_method"
    # what the promote step may move to @staging after comparing: knee, best_medical, names, or none
    promote: str | tuple[str, ...] = "none"
    # local worker processes evaluating candidates (or running trials) at once, each on its own GPU or share
    # of the cores (medmerge.selection.parallel_search); 1: one process. Not part of any cache key: the pipeline hands
    # it to the evaluation step apart from the config (pipelines.definitions)
    workers: int = Field(1, ge=1)
    # full: every candidate on every document; racing: candidates on growing batches of documents, those that
    # cannot reach the near set stopped early (medmerge.selection.race_search; zero-shot grids, one worker)
    evaluation: Literal["full", "racing"] = "full"
    racing: RacingOptions = RacingOptions()

    # The checks below raise ValueError (the medmerge error's text), so pydantic reports every bad key of a
    # config at once, each under its key (the preflight prints one line per key).
    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep_path(cls, v):
        with as_value_error():
            if isinstance(v, (str, Path)):
                return load_sweep(v)
            return parse_sweep(v, "sweep") if isinstance(v, dict) else v

    @field_validator("picks")
    @classmethod
    def _picks(cls, v):
        from medmerge.selection.promotion import check_picks

        with as_value_error():
            return check_picks(v)

    @field_validator("promote")
    @classmethod
    def _promote(cls, v):
        from medmerge.selection.promotion import check_policy

        with as_value_error():
            return check_policy(v)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v, info: ValidationInfo):
        from medmerge.evaluation.objectives import resolve, resolve_pair

        suites = info.data.get("suites")   # absent when the suites are wrong themselves: check the names only
        with as_value_error():
            if suites is None:
                for name in v:
                    resolve(name)
            else:
                resolve_pair(v, suites)
        return v

    _name = field_validator("registered_model", "experiment")(not_blank)

    @model_validator(mode="after")
    def _racing(self):
        from medmerge.selection.race_search import check_racing

        with as_value_error():
            check_racing(self)
        return self

    @model_validator(mode="after")
    def _output_apart_from_parents(self, info: ValidationInfo):
        from medmerge.io.atomic import refuse_aliased_output

        if not (info.context or {}).get("preflight"):   # the preflight checks output_dir itself, more fully
            refuse_aliased_output(self.output_dir, self.sweep.parent_refs, "parent model", may_contain=True)
        return self

    def objective_pair(self):
        from medmerge.evaluation.objectives import resolve_pair

        return resolve_pair(self.objectives, self.suites)

    def resolved_study_storage(self) -> str:
        if self.study_storage:
            return self.study_storage
        from medmerge.tracking.names import configured_tracking_uri
        from medmerge.tracking.server import DEFAULT_STATE_DIR, status

        uri = self.tracking_uri or configured_tracking_uri()
        info = status()
        if info is not None and (uri is None or uri == info.uri):
            return f"sqlite:///{Path(DEFAULT_STATE_DIR).resolve() / 'optuna.db'}"
        if uri and uri.startswith("sqlite:///"):
            return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"
        Path(self.output_dir).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(self.output_dir).resolve() / 'optuna.db'}"

    def resolved_tracking_uri(self) -> str:
        from medmerge.tracking.registry import resolve_tracking_uri

        return resolve_tracking_uri(self.tracking_uri)


class CandidateResult(BaseModel):
    name: str
    method: str
    ratio: float | None = None
    params: dict = Field(default_factory=dict)
    role: str | None = None           # "clinical" / "instruct": this candidate reproduces that parent
    recipe: Recipe
    identity: str
    run_id: str = ""                  # its nested MLflow run ("" until logged)
    report: EvalReport
    race: dict | None = None          # evaluation: racing: documents used, whether and why it stopped


class SearchResults(BaseModel, HasParentRun):
    """Every candidate's report; once logged (:func:`log_search`), also where: server, experiment, runs
    (``parent_run()``: the handle on the search's parent run)."""

    tracking_uri: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    parents: dict[str, dict]          # ref -> {path, weights: {file: sha256}}
    candidates: list[CandidateResult]  # every candidate scored on the full suite: what the selection sees
    # evaluation: racing: the candidates stopped early (partial reports, never selected) and the race's record
    stopped: list[CandidateResult] = Field(default_factory=list)
    racing: dict | None = None

    def by_name(self) -> dict[str, CandidateResult]:
        return {c.name: c for c in self.candidates}


class Frontier(BaseModel):
    """The selection: frontier, near set, knee and hypervolume, with the figures' paths."""

    selection: SelectionSummary
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
    run_id: str = ""                  # the candidate's MLflow run, when it was logged before writing


def _logged_run(a: dict):
    """Where a step after ``log_search`` logs its cost: the search's parent run."""
    r = a["results"]
    return (r.tracking_uri, r.parent_run_id) if getattr(r, "parent_run_id", None) else None


@measured("check_parents")
def check_parents(cfg: SearchConfig) -> dict[str, dict]:
    """Open and check the parents (errors name the first offending thing); return their weight hashes."""
    from medmerge.io.provenance import parent_provenance
    from medmerge.merge.engine import open_parents

    spec = cfg.sweep
    refs = [spec.clinical, spec.instruct] + ([spec.base] if spec.base else [])
    return parent_provenance(open_parents(refs))


@measured("evaluate_candidates")   # merge + evaluate every candidate: the sweep's cost in cost.md
def evaluate(cfg: SearchConfig, parents: dict[str, dict], workers: int | None = None,
             on_event=None) -> SearchResults:
    """Evaluate every candidate in memory (no MLflow; each (candidate, task) score is cached on disk, so a
    killed run's rerun evaluates only what is missing), on ``workers`` local processes (default
    ``cfg.workers``; :mod:`medmerge.selection.parallel_search`; ``on_event`` sees their progress)."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.sweep_eval import evaluate_sweep

    workers = workers or cfg.workers
    if cfg.evaluation == "racing":
        from medmerge.selection.race_search import race_grid

        return raced_results(parents, race_grid(cfg, EvalCache()))
    if workers > 1:
        from medmerge.selection import parallel_search

        if cfg.sweep.search == "optuna":
            pairs = parallel_search.optuna_search(cfg, EvalCache(), workers, _study_name(cfg, parents), on_event)
        else:
            pairs = parallel_search.evaluate_grid(cfg, EvalCache(), workers, on_event)
    elif cfg.sweep.search == "optuna":
        pairs = _optuna_search(cfg, parents, EvalCache())
    else:
        pairs = evaluate_sweep(cfg.sweep, cfg.eval_settings(), EvalCache())
    return results_of(parents, pairs)


def raced_results(parents: dict[str, dict], raced) -> SearchResults:
    """``SearchResults`` of a race (:class:`~medmerge.selection.race_search.RacedSweep`): the survivors as the
    candidates, the others as ``stopped``, each with its course, and the race's record."""
    record = raced.result.record()
    courses = record["candidates"]

    def marked(pairs) -> list[CandidateResult]:
        return [c.model_copy(update={"race": courses[c.name]}) for c in results_of(parents, pairs).candidates]

    return SearchResults(parents=parents, candidates=marked(raced.full), stopped=marked(raced.stopped), racing=record)


def results_of(parents: dict[str, dict], pairs) -> SearchResults:
    """``SearchResults`` from ``(candidate, report)`` pairs, in their order."""
    results = []
    for cand, report in pairs:
        identity = report.model_fingerprint.removeprefix("candidate:")
        results.append(CandidateResult(name=cand.name, method=cand.method, ratio=cand.ratio, params=cand.params,
                                       role=cand.role, recipe=cand.recipe, identity=identity, report=report))
    return SearchResults(parents=parents, candidates=results)


def _optuna_search(cfg: SearchConfig, parents: dict[str, dict], cache, on_trial=None):
    """The parents, then every complete trial of the study (resumed from its storage if it exists)."""
    from medmerge.evaluation.sweep_eval import SweepEvaluator
    from medmerge.selection import optuna_search

    spec = cfg.sweep
    fixed = spec.parent_candidates()
    ev = SweepEvaluator(spec, cfg.eval_settings(), cache, representatives=fixed + optuna_search.representatives(spec))
    out: list[tuple[SweepCandidate, Any]] = [(c, ev.evaluate(c)) for c in fixed]
    out += optuna_search.run_study(spec, ev.evaluate, values_of(cfg.objective_pair()),
                                   storage=cfg.resolved_study_storage(), name=_study_name(cfg, parents),
                                   on_trial=on_trial)
    return out


def _study_name(cfg: SearchConfig, parents: dict[str, dict]) -> str:
    """The Optuna study of this space, objectives, evaluation and parents (not of the number of workers)."""
    from medmerge.selection import optuna_search

    settings = cfg.model_dump(mode="json", include={"suites", "data_dir", "limit", "num_fewshot", "max_gen_toks",
                                                    "dtype", *(k for k in PROMPT_FORMAT if k != "log_samples"
                                                               and getattr(cfg, k) not in ("none", None))})
    return optuna_search.study_name(cfg.sweep, cfg.objectives, {"eval": settings, "parents": parents})


@measured("log_search")
def log_search(cfg: SearchConfig, results: SearchResults, tracking_uri: str | None = None,
               run_name: str | None = None) -> SearchResults:
    """Log the search to ``tracking_uri`` (else the configured server): a parent run with the settings, the
    parents' hashes, the frontier table and figures; a nested run per candidate. A rerun of a run that did
    not finish (the server went down, say) logs into its parent run and keeps its finished candidate runs.
    Returns ``results`` with the server, experiment and run ids."""
    import tempfile

    from medmerge.selection import comparison
    from medmerge.tracking import registry

    uri = tracking_uri or cfg.resolved_tracking_uri()
    registry.check_reachable(uri)
    parent, logged = _open_parent_run(uri, cfg, results.parents, run_name or "merge_search")
    pid, exp_id = parent.run_id, parent.experiment_id
    cost.attach(uri, pid)   # the earlier steps' costs (evaluation included) are logged to it too
    with parent.failing_on_error():
        parent.param("sweep", json.dumps(cfg.sweep.model_dump(mode="json"))[:500])
        parent.params({k: str(getattr(cfg, k)) for k in ("suites", "limit", "eps", "data_dir", "registered_model",
                                                         "objectives", *PROMPT_FORMAT)})
        parent.json(results.parents, "parents.json")
        if results.candidates:  # the dtype the candidates were evaluated in (auto resolved)
            parent.param("dtype", str(results.candidates[0].report.settings.get("dtype")))
        parent.param("evaluation", cfg.evaluation)
        candidates: list[CandidateResult] = []
        stopped: list[CandidateResult] = []
        for group, out in ((results.candidates, candidates), (results.stopped, stopped)):
            for cand in group:
                rid = logged.get(cand.name) or registry.log_candidate(pid, exp_id, cand.name, cand.recipe, cand.report,
                                                                      uri, tags=race_tags(cand.race))
                out.append(cand.model_copy(update={"run_id": rid}))
        if results.racing is not None:   # how many documents each candidate used, and why it stopped
            parent.json(results.racing, "racing.json")
            used, full = results.racing["documents_used"], results.racing["documents_full"]
            parent.metrics({"racing.documents_used": used, "racing.documents_full": full,
                            "racing.documents_fraction": used / full, "racing.stopped": len(results.stopped)})
        with tempfile.TemporaryDirectory(prefix="medmerge-figures-") as tmp:
            pts, ends, sel = _selection(results, cfg)
            for f in _plot(pts, ends, sel, Path(tmp)):
                if f is not None:
                    parent.artifact(f, "figures")
            cmp = comparison.write(comparison_rows(results), Path(tmp) / "comparison")
            parent.artifact(cmp["md"])
            parent.artifact(cmp["json"])
            parent.artifact(cmp["png"], "figures")
        parent.text(sel.table(), "frontier.txt")
        parent.json(sel.to_dict(), "frontier.json")
        if sel.hypervolume is not None:
            parent.metric("hypervolume", sel.hypervolume)
    return results.model_copy(update={"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": pid,
                                      "candidates": candidates, "stopped": stopped})


def race_tags(race: dict | None) -> dict[str, str]:
    """A raced candidate's run tags: documents used (of the full suite's), whether it stopped, and why."""
    if race is None:
        return {}
    return {"racing.documents": str(race["documents"]), "racing.documents_full": str(race["documents_full"]),
            "racing.stopped": str(race["stopped"]).lower(), "racing.reason": race["reason"][:5000]}


def _open_parent_run(uri: str, cfg: SearchConfig, parents: dict[str, dict], run_name: str):
    """``(parent run, {candidate: run_id})``: the parent run of an unfinished (say killed) run of the same config
    and parents, resumed, with its finished candidate runs (a half-logged one is deleted: it is logged again);
    else a new parent run and ``{}``."""
    import hashlib

    from medmerge.tracking import runs

    key = hashlib.sha256(json.dumps({"config": cfg.model_dump(mode="json", exclude={"workers"}), "parents": parents},
                                    sort_keys=True).encode()).hexdigest()[:32]
    parent, resumed = runs.open_parent(uri, cfg.experiment, key, run_name, phase="merge_search")
    logged = {}
    if resumed:
        for n in parent.children():
            if n.status == "FINISHED" and "candidate" in n.tags:
                logged[n.tags["candidate"]] = n.run_id
            else:
                runs.delete(parent.child(n.run_id))
    return parent, logged


def _points(results: SearchResults, ox, oy):
    """One Pareto point per candidate: its scores on the objectives ``ox`` and ``oy``, each with its stderr
    (which ``use_stderr`` widens the near set by)."""
    from medmerge.selection.pareto import ScoredPoint as Point

    pts = []
    for c in results.candidates:
        (x, x_se), (y, y_se) = ox.score(c.report), oy.score(c.report)
        pts.append(Point(name=c.name, x=x, y=y, x_stderr=x_se, y_stderr=y_se, method=c.method, ratio=c.ratio))
    return pts


def _selection(results: SearchResults, cfg: SearchConfig):
    """The points, the parents' (x, y) and the Pareto selection (deterministic)."""
    from medmerge.selection import pareto

    objectives = cfg.objective_pair()
    pts = _points(results, *objectives)
    by_name = {p.name: p for p in pts}
    ends = {role: next((by_name[c.name] for c in results.candidates if c.role == role), None)
            for role in ("clinical", "instruct")}
    parents = {k: (v.x, v.y) for k, v in ends.items() if v is not None}
    sel = pareto.select(pts, eps=cfg.eps, use_stderr=cfg.use_stderr, parents=parents if len(parents) == 2 else None,
                        objectives=objectives)
    return pts, parents, sel


def _plot(pts, parents, sel, figures_dir: Path) -> tuple[Path, Path | None]:
    from medmerge.selection import figures

    x, y = sel.labels
    fig_f = figures.plot_frontier(pts, figures_dir / "frontier.png", parents=parents or None, selection=sel,
                                  title=f"{y} vs {x}")
    if not any(p.ratio is not None for p in pts):   # a methods grid or a search: no ratio to plot along
        return fig_f, None
    fig_t = figures.plot_trajectories(pts, figures_dir / "trajectories.png", title="Scores along the ratio",
                                      labels=sel.labels)
    return fig_f, fig_t


def comparison_rows(results: SearchResults) -> list[dict]:
    """The rows of the comparison table (:mod:`medmerge.selection.comparison`): every candidate, the parents marked."""
    return [{"name": c.name, "method": c.method, "params": c.params, "role": c.role, "report": c.report}
            for c in results.candidates]


@measured("select_frontier", run=_logged_run)
def select_frontier(results: SearchResults, cfg: SearchConfig, figures_dir: str | Path) -> Frontier:
    """Frontier, ε-near set, knee and hypervolume (reference: the worse parent), and the figures."""
    pts, parents, sel = _selection(results, cfg)
    fig_f, fig_t = _plot(pts, parents, sel, Path(figures_dir))
    return Frontier(selection=sel.to_dict(), frontier=[p.name for p in sel.frontier], near=[p.name for p in sel.near],
                    knee=sel.knee.name, hypervolume=sel.hypervolume, table=sel.table(),
                    figures={k: str(f) for k, f in (("frontier", fig_f), ("trajectories", fig_t)) if f is not None})


@measured("write_selected", run=_logged_run)
def write_selected(cfg: SearchConfig, results: SearchResults, frontier: Frontier) -> list[CheckpointDir]:
    """Write only the selected (near-frontier) candidates, each atomically, reading parents once."""
    from medmerge.merge.engine import open_parents, plan_merge, write_plans
    from medmerge.selection.promotion import choose

    by = results.by_name()
    # the near set, and the picks and the candidate to promote even when they are not near the frontier
    picks = choose(cfg.picks, cfg.promote, frontier, results)
    extra = [*picks.picks.values(), *([picks.promote_candidate] if picks.promote_candidate else [])]
    chosen = [by[n] for n in dict.fromkeys([*frontier.near, *extra])]
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


@measured("register_selected", run=_logged_run)
def register_selected(cfg: SearchConfig, results: SearchResults, frontier: Frontier,
                      checkpoints: list[CheckpointDir]) -> dict[str, str]:
    """Register each written checkpoint (no duplicates) on the server ``results`` were logged to, under its
    candidate's run (the promote step after it closes the parent run). Returns {candidate: version}."""
    from medmerge.io import provenance
    from medmerge.tracking import registry

    by = results.by_name()
    parents = provenance.tags(provenance.weights(results.parents))   # what retrain compares with
    objectives = cfg.objective_pair()
    versions = {}
    for ck in checkpoints:
        cand = by[ck.name]
        scores = {}   # the selection's objectives under their own names, each with its stderr
        for o in objectives:
            value, stderr = o.score(cand.report)
            scores[o.name] = value
            if stderr is not None:
                scores[f"{o.name}_stderr"] = stderr
        tags = {**cand.recipe.tags(), "candidate": ck.name, **scores,
                "objectives": ",".join(o.name for o in objectives), **parents,
                "knee": str(ck.name == frontier.knee)}
        reg = registry.register_checkpoint(cfg.registered_model, Path(ck.path), cand.run_id, ck.identity, tags,
                                           results.tracking_uri)
        versions[ck.name] = reg.version
    parent = results.parent_run()
    parent.open_or_nested("registered_versions").json(versions, "registered_versions.json")
    return versions   # the promote step, the last, closes the parent run


def shard_results(cfg, parents: dict, shard: int, shards: int):
    """One shard's :class:`SearchResults` (the fan-out's evaluation step)."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.selection import parallel_search
    from medmerge.selection.race_search import RaceSearchError

    if cfg.evaluation == "racing":   # a shard sees only its candidates: it cannot race them against the others
        raise RaceSearchError("evaluation: racing runs in merge_search on one process; merge_search_parallel fans "
                              "the evaluation out in full (use evaluation: full there)")

    return results_of(parents, parallel_search.evaluate_shard(cfg, shard, shards, EvalCache()))


def gather_results(cfg, parents: dict, parts: list):
    """The shards' results as one :class:`SearchResults`, in the sweep's order (what
    ``evaluate_candidates`` returns for the same config)."""
    from medmerge.selection import parallel_search

    by_name = [[(c, c.report) for c in part.candidates] for part in parts]
    order = parallel_search.gather(cfg.sweep, by_name)
    return SearchResults(parents=parents, candidates=[c for c, _ in order])
