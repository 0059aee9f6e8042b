"""A merge search on N local workers (``workers: N`` in the merge_search run config).

The grid: every candidate is one task of a :class:`medmerge.runtime.workers.WorkerPool`; each worker builds one
:class:`~medmerge.evaluation.sweep_eval.SweepEvaluator` (the parents read into memory once, one resident
model on the worker's device) and evaluates the candidates it is handed, exactly as the one-process
sweep does. Results come back to the parent and are returned in the sweep's order, so what follows
(selection, logging, registration) cannot tell how many workers there were.

``search: optuna``: the N workers ask and tell one study. Its storage is shared across processes:
Optuna's journal file (``JournalFileBackend``, whose file lock makes appends safe across processes) by
default, or the RDB URL ``study_storage`` names, opened with Optuna's heartbeat (a trial whose worker
stopped beating is failed and re-queued once by ``RetryHeartbeatStaleTrialCallback(max_retry=1)``, so
pods on other machines recover each other's trials). Each task runs one trial
(``study.optimize(n_trials=1)`` with ``MaxTrialsCallback(budget, states=(COMPLETE,))`` as a guard), and
the parent hands out ``budget`` minus the complete trials, so the budget counts complete trials over
all workers. When a local worker dies, its RUNNING trial is failed and re-queued once at once
(the journal file has no heartbeat; the parent knows its own workers died). The selection is made
over every complete trial of the study.

With N workers TPE proposes each trial from the trials finished so far by all workers, so the
trials differ from a one-worker search (each worker's sampler is seeded ``seed + worker index``); a
grid gives the same candidates, reports and selection whatever N. ``batch: B`` makes an Optuna search the
same whatever N too: the parent asks and tells, a round of B trials at a time
(:func:`medmerge.selection.optuna_search.run_rounds`), and the workers, kept between rounds, only evaluate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medmerge.runtime.workers import WorkerPool, current_slot

MAX_RETRY = 1              # a trial left running by a dead worker is re-queued once
HEARTBEAT_INTERVAL = 60    # seconds, RDB storage: a worker's running trial beats this often
GRACE_PERIOD = 180         # seconds without a beat after which another worker fails and re-queues it


# --- the study's storage ---------------------------------------------------------------------------
def journal_path(sqlite_url: str) -> Path:
    """The journal file used in place of the default sqlite file when several local workers share the study."""
    return Path(sqlite_url.removeprefix("sqlite:///")).with_suffix(".journal")


def open_storage(url: str, heartbeat: bool = True):
    """``url`` as an Optuna storage several processes can share: ``journal:`` + a path is a journal file;
    an SQLAlchemy URL an RDB storage, with the heartbeat on for workers that ask and tell on their own (a
    batched search asks and tells in the parent only: a killed parent's RUNNING trials are re-queued when the
    study is opened again)."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if not heartbeat:
        return RDBStorage(url)
    with warnings.catch_warnings():   # the heartbeat and its retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))


def shared_storage_url(cfg) -> str:
    """Where N workers keep the study: ``study_storage`` when given, else a journal file where the one-worker
    sqlite file would be (sqlite is not made for writers in several processes)."""
    if cfg.study_storage:
        return cfg.study_storage
    return f"journal:{journal_path(cfg.resolved_study_storage())}"


def requeue_orphans(study, alive: Callable[[str], bool]) -> list[int]:
    """Fail each RUNNING trial whose worker (its ``worker`` attribute) is no longer ``alive``, and re-queue it
    once (Optuna's RetryHeartbeatStaleTrialCallback, as a heartbeat would). Returns the failed trials' numbers."""
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker is None or alive(worker):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue   # finished meanwhile, or another process failed it
        retry(study, study._storage.get_trial(t._trial_id))
        failed.append(t.number)
    return failed


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def local_worker_alive(worker: str) -> bool:
    """A worker of this host is alive while its process exists; a worker elsewhere is left to the heartbeat."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


# --- inside a worker -------------------------------------------------------------------------------
@dataclasses.dataclass
class _Worker:
    cfg: Any
    evaluator: Any
    study_url: str | None = None
    study_name: str | None = None
    study: Any = None


def _make_worker(slot, cfg, cache_root: str, representatives: list, study: tuple[str, str] | None):
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.sweep_eval import SweepEvaluator

    settings = cfg.eval_settings()
    if slot.device.startswith("cuda"):   # the worker sees one GPU, as cuda:0
        settings = dataclasses.replace(settings, device=slot.device)
    ev = SweepEvaluator(cfg.sweep, settings, EvalCache(cache_root), representatives=representatives)
    url, name = study or (None, None)
    return _Worker(cfg, ev, url, name)


def _evaluate(w: _Worker, cand):
    return cand, w.evaluator.evaluate(cand)


def _trial(w: _Worker, budget: int, sampler: str = "tpe"):
    """One complete trial of the shared study: ``(number, candidate, report)``, or None when the study already
    has ``budget`` complete trials (a worker elsewhere finished them)."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from medmerge.selection import optuna_search

    optuna = optuna_search._optuna()
    spec = w.cfg.sweep
    if w.study is None:
        slot = current_slot()
        assert w.study_url is not None   # a worker of an Optuna search is made with its study
        w.study = optuna.load_study(study_name=w.study_name, storage=open_storage(w.study_url),
                                    sampler=optuna_search.make_sampler(sampler, spec.seed + (slot.index if slot else 0)))
    if len(optuna_search.complete_trials(w.study)) >= budget:
        return None
    from medmerge.evaluation.objectives import values_of

    score = values_of(w.cfg.objective_pair())
    out = {}

    def objective(trial):
        method, params = optuna_search.suggest(trial, spec)
        cand = spec.candidate(method, params, name=optuna_search.trial_name(trial.number, method))
        trial.set_user_attr("candidate", json.dumps([method, params]))
        trial.set_user_attr("worker", worker_id())
        report = w.evaluator.evaluate(cand)
        out["result"] = (trial.number, cand, report)
        return score(report)

    w.study.optimize(objective, n_trials=1, callbacks=[MaxTrialsCallback(budget, states=(TrialState.COMPLETE,))])
    return out.get("result")


def _task(w: _Worker, kind: str, *args):
    return (_evaluate if kind == "evaluate" else _trial)(w, *args)


# --- in the parent ---------------------------------------------------------------------------------
def evaluate_grid(cfg, cache, workers: int, on_event: Callable | None = None):
    """``(candidate, report)`` for every candidate of the sweep (as :func:`evaluate_sweep` yields them), on
    ``workers`` local processes."""
    cands = cfg.sweep.evaluated_candidates()
    with WorkerPool(min(workers, len(cands)), cfg.eval_settings().device, _make_worker,
                    (cfg, str(cache.root), cands, None), on_event=on_event) as pool:
        done = pool.run(_task, [(c.name, ("evaluate", c)) for c in cands])
    return [done[c.name] for c in cands]


def optuna_search(cfg, cache, workers: int, name: str, on_event: Callable | None = None):
    """The parents, then every complete trial of the shared study (in trial order), run on ``workers``
    local processes that ask and tell one study."""
    from medmerge.selection import optuna_search as osearch

    spec = cfg.sweep
    url = shared_storage_url(cfg)
    # created here; a killed run's trials re-queued
    study = osearch.open_study(open_storage(url, heartbeat=not spec.batch), name, spec.seed)
    fixed = spec.parent_candidates()
    have = osearch.complete_trials(study)
    left = max(0, spec.budget - len(have))

    def event(kind, pid, key):
        if kind == "broken":   # every worker of the broken pool is gone: their running trials go back
            requeue_orphans(study, local_worker_alive)
        if on_event is not None:
            on_event(kind, pid, key)

    pool = WorkerPool(workers, cfg.eval_settings().device, _make_worker,
                      (cfg, str(cache.root), fixed + osearch.representatives(spec), (url, name)), on_event=event)
    if spec.batch:
        with pool:
            return _optuna_rounds(cfg, pool, study, fixed)
    tasks = [(c.name, ("evaluate", c)) for c in fixed]
    tasks += [(osearch.candidate_of(spec, t).name, ("evaluate", osearch.candidate_of(spec, t))) for t in have]
    tasks += [(f"trial-task-{i}", ("trial", spec.budget)) for i in range(left)]
    with pool:
        done = pool.run(_task, tasks)
        trials = {r[0]: (r[1], r[2]) for k, r in done.items() if k.startswith("trial-task-") and r is not None}
        trials.update({t.number: done[osearch.candidate_of(spec, t).name] for t in have})
        # a trial told just before its worker died has no report here: from the evaluation cache
        complete = osearch.complete_trials(study)
        missing = [t for t in complete if t.number not in trials]
        if missing:
            trials.update(pool.run(_task, [(t.number, ("evaluate", osearch.candidate_of(spec, t))) for t in missing]))
    return [done[c.name] for c in fixed] + [trials[t.number] for t in complete]


def _optuna_rounds(cfg, pool: WorkerPool, study, fixed: list) -> list:
    """``batch: B``: the parent asks and tells (:func:`~medmerge.selection.optuna_search.study_results`, as one
    worker does), the workers evaluate each round's B candidates side by side; the same trials as one worker."""
    from medmerge.evaluation.objectives import values_of
    from medmerge.selection import optuna_search as osearch

    def evaluate_many(cands: list) -> list:
        done = pool.run(_task, [(c.name, ("evaluate", c)) for c in cands])
        return [done[c.name][1] for c in cands]

    parents = list(zip(fixed, evaluate_many(fixed), strict=True))
    return parents + osearch.study_results(study, cfg.sweep, evaluate_many, values_of(cfg.objective_pair()))


# --- a fan-out over pods (pipelines.merge_search_parallel): shards of the grid, gathered ---------------
def shard_candidates(spec, shard: int, shards: int) -> list:
    """The candidates shard ``shard`` of ``shards`` evaluates: every ``shards``-th of the sweep's, from ``shard``."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    return spec.evaluated_candidates()[shard::shards]


def evaluate_shard(cfg, shard: int, shards: int, cache) -> list:
    """``(candidate, report)`` for one shard, in this process on its device (the parents read once)."""
    from medmerge.evaluation.sweep_eval import SweepEvaluator

    if cfg.sweep.search == "optuna":
        raise ValueError("search: optuna runs on local workers (workers: N), not in shards")
    cands = shard_candidates(cfg.sweep, shard, shards)
    if not cands:
        return []
    ev = SweepEvaluator(cfg.sweep, cfg.eval_settings(), cache, representatives=cands)
    return [(c, ev.evaluate(c)) for c in cands]


def gather(spec, shards: list[list]) -> list:
    """The shards' ``(candidate, report)`` pairs in the sweep's order; every candidate exactly once."""
    from medmerge.errors import MedmergeError

    by_name: dict = {}
    for pairs in shards:
        for cand, report in pairs:
            if cand.name in by_name:
                raise MedmergeError(f"candidate {cand.name} was evaluated by two shards")
            by_name[cand.name] = (cand, report)
    expected = [c.name for c in spec.evaluated_candidates()]
    missing = [n for n in expected if n not in by_name]
    if missing or len(by_name) != len(expected):
        raise MedmergeError(f"the shards did not evaluate {', '.join(missing) or 'the sweep'}")
    return [by_name[n] for n in expected]
