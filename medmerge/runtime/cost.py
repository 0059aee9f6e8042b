"""What each step costs: wall time, peak RSS and peak GPU memory as MLflow metrics, MLflow's own
system-metrics series, and the finetune run's ``cost.md`` (the forgetting study's "merge vs SFT").

Every phase function the pipeline steps call is wrapped by :func:`measured`. For a step called
``S`` it logs, to the step's MLflow run:

- ``cost.S.wall_seconds``: wall-clock time of the call;
- ``cost.S.peak_rss_mib``: the process's peak resident set during the call (Linux resets the
  high-water mark through ``/proc/self/clear_refs``; elsewhere it is the process's peak so far);
- ``cost.S.peak_gpu_mib``: ``torch.cuda.max_memory_allocated`` over all GPUs during the call,
  only when there is a GPU.

While a step runs with a run attached, MLflow's ``SystemMetricsMonitor`` (psutil, and pynvml
on GPUs) samples CPU, memory, disk, network and GPU into the run's ``system/*`` series; no
sampler of our own. ``MEDMERGE_SYSTEM_METRICS=0`` turns the series off,
``MEDMERGE_SYSTEM_METRICS_INTERVAL`` (seconds, default 5) sets the sampling period.

A step that runs before its phase's MLflow run exists (``check_parents``, ``load_data``) keeps its
figures until the next step attaches a run, and they are logged to that run's parent. This needs
the steps to run in one process (ZenML's local orchestrator); on a step-per-pod orchestrator those
early steps' figures are not logged.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("medmerge.runtime.cost")
_HWM = re.compile(r"VmHWM:\s+(\d+)\s+kB")
MIB = 2 ** 20


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            m = _HWM.search(f.read())
        if m:
            return int(m[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _cuda():
    """torch.cuda when torch is already imported and a GPU is there (never imports torch itself)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() else None
    except Exception:
        return None


@dataclass
class StepCost:
    """One step's measurement; ``metrics()`` are what is logged."""

    step: str
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int | None = None
    target: tuple[str, str] | None = None          # (tracking uri, run id) the metrics go to
    parent: tuple[str, str] | None = None          # where figures of run-less earlier steps go
    _t0: float = field(default=0.0, repr=False)
    _monitor: Any = field(default=None, repr=False)

    def metrics(self) -> dict[str, float]:
        out = {f"cost.{self.step}.wall_seconds": round(self.wall_seconds, 3),
               f"cost.{self.step}.peak_rss_mib": round(self.peak_rss_bytes / MIB, 1)}
        if self.peak_gpu_bytes is not None:
            out[f"cost.{self.step}.peak_gpu_mib"] = round(self.peak_gpu_bytes / MIB, 1)
        return out

    def attach(self, tracking_uri: str, run_id: str, parent_run_id: str | None = None) -> None:
        """Send this step's figures to ``run_id`` and start MLflow's system-metrics series on it; figures
        of earlier steps that had no run go to ``parent_run_id`` (default: ``run_id``)."""
        if self.target is not None:
            return
        self.target = (tracking_uri, run_id)
        self.parent = (tracking_uri, parent_run_id or run_id)
        _flush_pending(*self.parent)
        self._monitor = _start_system_metrics(tracking_uri, run_id)


_active: list[StepCost] = []
_pending: list[StepCost] = []


def attach(tracking_uri: str, run_id: str, parent_run_id: str | None = None) -> None:
    """Attach the innermost running step to a run (a phase function calls this once it has opened its run)."""
    if _active:
        _active[-1].attach(tracking_uri, run_id, parent_run_id)


def _log(cost: StepCost, tracking_uri: str, run_id: str) -> None:
    from medmerge.tracking import runs

    try:
        runs.Run(tracking_uri, run_id).metrics(cost.metrics())
    except Exception as exc:  # accounting must never fail the step it measures
        log.warning("could not log the cost of step %s to run %s: %s", cost.step, run_id, exc)


def _flush_pending(tracking_uri: str, run_id: str) -> None:
    while _pending:
        _log(_pending.pop(0), tracking_uri, run_id)


def _system_metrics_enabled() -> bool:
    if os.environ.get("MEDMERGE_SYSTEM_METRICS", "1").lower() in ("0", "false", "no", "off"):
        return False
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def _start_system_metrics(tracking_uri: str, run_id: str):
    if not _system_metrics_enabled():
        return None
    from medmerge.tracking.runs import start_system_metrics

    return start_system_metrics(tracking_uri, run_id,
                                interval=float(os.environ.get("MEDMERGE_SYSTEM_METRICS_INTERVAL", "5")))


def _start_clock(cost: StepCost) -> StepCost:
    _reset_peak_rss()
    cuda = _cuda()
    if cuda is not None:
        cuda.synchronize()
        for i in range(cuda.device_count()):
            cuda.reset_peak_memory_stats(i)
    cost._t0 = time.perf_counter()
    return cost


def _stop_clock(cost: StepCost) -> StepCost:
    cost.wall_seconds = time.perf_counter() - cost._t0
    cost.peak_rss_bytes = _peak_rss_bytes()
    cuda = _cuda()
    if cuda is not None:
        cost.peak_gpu_bytes = sum(cuda.max_memory_allocated(i) for i in range(cuda.device_count()))
    return cost


@contextmanager
def measuring(step: str) -> Iterator[StepCost]:
    """Measure a block as step ``step`` and log nothing: its ``metrics()`` are the caller's to hand on (a
    worker process never talks to MLflow: the SFT it trains records them beside the checkpoint)."""
    cost = _start_clock(StepCost(step=step))
    try:
        yield cost
    finally:
        _stop_clock(cost)


def begin(step: str) -> StepCost:
    cost = _start_clock(StepCost(step=step))
    _active.append(cost)
    return cost


def end(cost: StepCost) -> StepCost:
    _stop_clock(cost)
    if _active and _active[-1] is cost:
        _active.pop()
    if cost._monitor is not None:
        try:
            cost._monitor.finish()
        except Exception as exc:
            log.warning("stopping MLflow system metrics: %s", exc)
    if cost.target is not None:
        _log(cost, *cost.target)
    else:  # no run yet: logged to the parent of the next run a step attaches
        _pending.append(cost)
    return cost


def measured(step: str | Callable[[dict], str], run: Callable[[dict], tuple | None] | None = None):
    """Decorate a phase function: measure each call as step ``step`` (a name, or a function of the call's
    arguments by name). ``run(arguments)`` gives ``(tracking_uri, run_id[, parent_run_id])`` where the call
    already knows its run; otherwise the function calls :func:`attach` once it has opened one."""

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            named = dict(bound.arguments)
            cost = begin(step(named) if callable(step) else step)
            try:
                where = run(named) if run is not None else None
                if where:
                    cost.attach(*where)
                return fn(*args, **kwargs)
            finally:
                end(cost)

        return inner

    return wrap


# ---------------------------------------------------------------------------------------------
# cost.md: merge vs SFT
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CostRow:
    what: str
    detail: str
    wall_seconds: float | None
    peak_rss_mib: float | None = None
    peak_gpu_mib: float | None = None


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cost_table(sweep: CostRow | None, sft: list[CostRow]) -> str:
    """The finetune run's ``cost.md``: the merge search (merge + evaluation of every candidate) against
    each SFT run, with each SFT run's time as a multiple of the whole sweep's."""
    from medmerge.io.tables import markdown_table

    rows = ([sweep] if sweep else []) + list(sft)
    lines = ["# Cost: merge vs SFT", ""]
    if sweep is None:
        lines += ["No merge-search run is linked to this finetune run (no initialisation came from the "
                  "registry), so only the SFT runs are listed.", ""]
    base = sweep.wall_seconds if sweep and sweep.wall_seconds else None
    cells = []
    for r in rows:
        ratio = None if base is None or r.wall_seconds is None else r.wall_seconds / base
        cells.append([r.what, r.detail, _fmt(r.wall_seconds), _fmt(ratio, 2), _fmt(r.peak_rss_mib, 0),
                      _fmt(r.peak_gpu_mib, 0)])
    lines.append(markdown_table(["what", "detail", "wall time (s)", "x sweep", "peak RSS (MiB)", "peak GPU (MiB)"],
                                cells, right=(2, 3, 4, 5)))
    if base and sft:
        total = sum(r.wall_seconds or 0.0 for r in sft)
        lines += ["", f"All {len(sft)} SFT runs: {total:.1f} s, {total / base:.2f} x the merge search."]
    return "\n".join(lines).rstrip() + "\n"


def _metrics_row(metrics: dict[str, float], steps: tuple[str, ...]) -> tuple[float | None, float | None, float | None]:
    """Summed wall time and the largest peaks over ``steps``' cost metrics."""
    wall = [metrics.get(f"cost.{s}.wall_seconds") for s in steps]
    rss = [metrics.get(f"cost.{s}.peak_rss_mib") for s in steps]
    gpu = [metrics.get(f"cost.{s}.peak_gpu_mib") for s in steps]
    have = [w for w in wall if w is not None]
    return (sum(have) if have else None, max((v for v in rss if v is not None), default=None),
            max((v for v in gpu if v is not None), default=None))


SWEEP_STEPS = ("evaluate_candidates", "write_selected")   # merge + evaluate in memory, write the picks


def sweep_row(tracking_uri: str, model_uris: list[str]) -> CostRow | None:
    """The merge search that produced the first registered initialisation (``models:/NAME@alias`` or
    ``models:/NAME/VERSION``): its candidate run's parent holds the sweep's cost metrics."""
    from medmerge.tracking import runs
    from medmerge.tracking.registry import model_version

    for uri in model_uris:
        try:
            mv = model_version(tracking_uri, uri)
            parent_id = runs.get(tracking_uri, mv.run_id).parent_run_id if mv.run_id else None
            if not parent_id:
                continue
            parent = runs.get(tracking_uri, parent_id)
            n = len(runs.search(tracking_uri, [parent.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"))
        except Exception as exc:
            log.warning("no merge-search cost for %s: %s", uri, exc)
            continue
        wall, rss, gpu = _metrics_row(parent.metrics, SWEEP_STEPS)
        if wall is None:
            continue
        return CostRow(what="merge search", detail=f"{n} candidates merged + evaluated in memory, picks written "
                       f"(run {parent.name or parent_id})", wall_seconds=wall, peak_rss_mib=rss,
                       peak_gpu_mib=gpu)
    return None


def sft_rows(tracking_uri: str, sft_runs: list[tuple[str, str, int]]) -> list[CostRow]:
    """One row per SFT run ``(label, run id, optimisation steps)``: the training's own figures
    (``cost.sft_train.*``, measured where it trained: in the ``sft`` step or in a worker), else the ``sft``
    step's."""
    from medmerge.tracking import runs

    out = []
    for label, rid, steps in sft_runs:
        try:
            metrics = runs.get(tracking_uri, rid).metrics
        except Exception:
            metrics = {}
        wall, rss, gpu = _metrics_row(metrics, ("sft_train",))
        if wall is None:
            wall, rss, gpu = _metrics_row(metrics, ("sft",))
        out.append(CostRow(what=f"SFT {label}", detail=f"{steps} steps", wall_seconds=wall, peak_rss_mib=rss,
                           peak_gpu_mib=gpu))
    return out
