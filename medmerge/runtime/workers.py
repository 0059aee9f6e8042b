"""Local worker processes: N processes, each pinned to its device, each holding one state built once.

The engine is :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (a worker
starts clean: no CUDA context or torch thread pool inherited from the parent). Each worker takes one
:class:`Slot` when it starts:

* on CUDA, ``CUDA_VISIBLE_DEVICES`` names one GPU (worker i gets the i-th visible GPU, round robin when
  there are more workers than GPUs), so the worker's device is ``cuda`` and it cannot touch another GPU;
* on a CPU, a share of the cores: ``torch.set_num_threads(cores // N)`` (and ``OMP_NUM_THREADS``), so N
  workers together use the cores one process would.

A worker builds its state (``init(slot, *args)``: say, the parents read into memory and one resident
model) on its first task and keeps it for every later task, so the parents are read once per worker,
not once per task.

Faults: a worker that dies (SIGKILL, the OOM killer) breaks the pool (``BrokenProcessPool``; the
executor terminates the others). :meth:`WorkerPool.run` then starts a fresh pool and submits again
every task that had not returned, so the task the dead worker held is run by another worker. A task's
result is taken from the one future that returned it, so nothing is counted twice. A task that was in
flight when the pool broke :data:`MAX_ATTEMPTS` times fails the run with one line (a candidate that
kills its worker each time, by running out of memory say, is not retried for ever).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import sys
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from medmerge.errors import MedmergeError

MAX_ATTEMPTS = 2   # a task may be in flight in two pools that broke; the third time the run fails


class WorkerError(MedmergeError):
    """A worker pool could not finish its tasks (one line)."""


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: its index, the device it sees, its thread count and environment."""

    index: int
    device: str
    threads: int
    env: dict[str, str] = field(default_factory=dict)


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def plan_slots(n: int, device: str, cores: int | None = None, gpus_per_worker: int = 1) -> list[Slot]:
    """One slot per worker for ``device`` (``cpu``, ``cuda``, ``cuda:K``, ``mps``).

    ``cuda``: the visible GPUs round robin; ``cuda:K``: every worker on GPU K (the user named one);
    ``gpus_per_worker`` > 1 (an SFT sharded over several GPUs): worker i gets the i-th group of that many,
    and there must be enough for every worker. Each worker gets ``cores // n`` threads (at least one)."""
    if n < 1:
        raise WorkerError(f"workers must be at least 1, got {n}")
    if gpus_per_worker > 1 and device.startswith("cuda"):
        gpus = visible_gpus()
        if n * gpus_per_worker > len(gpus):
            raise WorkerError(f"{n} workers with {gpus_per_worker} GPUs each need {n * gpus_per_worker} GPUs; "
                              f"{len(gpus)} visible")
        threads = max(1, (cores or cpu_count()) // n)
        return [Slot(i, "cuda", threads, {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
                                          "CUDA_VISIBLE_DEVICES": ",".join(gpus[i * gpus_per_worker:
                                                                               (i + 1) * gpus_per_worker])})
                for i in range(n)]
    threads = max(1, (cores or cpu_count()) // n)
    base = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if device.startswith("cuda"):
        gpus = visible_gpus()
        if not gpus:
            raise WorkerError(f"device {device} asked for, but no GPU is visible")
        if ":" in device:
            k = int(device.split(":", 1)[1])
            if k >= len(gpus):
                raise WorkerError(f"device {device}: only {len(gpus)} GPU(s) visible")
            gpus = [gpus[k]]
        return [Slot(i, "cuda", threads, {**base, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}) for i in range(n)]
    return [Slot(i, device, threads, dict(base)) for i in range(n)]


# --- inside a worker -------------------------------------------------------------------------------
_SLOT: Slot | None = None
_STATE: Any = None
_INIT: tuple[Callable, tuple] | None = None
_EVENTS: Any = None


def _start(slots, init: Callable, init_args: tuple, events) -> None:
    """Initializer: take a slot, pin the process to it (before torch is imported: no CUDA context, no thread
    pool yet)."""
    global _SLOT, _INIT, _EVENTS
    _SLOT = slots.get()
    os.environ.update(_SLOT.env)   # torch, imported later by the work, reads OMP_NUM_THREADS and CUDA_VISIBLE_DEVICES
    _INIT, _EVENTS = (init, init_args), events


def current_slot() -> Slot | None:
    """The slot of the worker this runs in (None in the parent)."""
    return _SLOT


def _call(fn: Callable, key: Hashable, args: tuple):
    global _STATE
    _EVENTS.put(("start", os.getpid(), key))
    if _STATE is None:   # built once per worker, on its first task
        assert _INIT is not None and _SLOT is not None   # set by _start, the pool's initializer
        init, init_args = _INIT
        _STATE = init(_SLOT, *init_args)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(_SLOT.threads)
    return fn(_STATE, *args)


# --- in the parent ---------------------------------------------------------------------------------
class WorkerPool:
    """N local worker processes, each on its slot, each holding ``init(slot, *init_args)``.

    ``on_event(kind, pid, key)`` is called in the parent for each ``start`` (a worker began a task),
    ``done`` (it returned) and ``broken`` (the pool broke; ``pid`` is None): progress and tests."""

    def __init__(self, n: int, device: str, init: Callable, init_args: tuple = (), *,
                 on_event: Callable | None = None, cores: int | None = None, gpus_per_worker: int = 1):
        self.slots = plan_slots(n, device, cores, gpus_per_worker)
        self.init, self.init_args = init, init_args
        self.on_event = on_event
        self.breaks = 0
        self.ctx = mp.get_context("spawn")
        self._live: tuple | None = None    # the executor and its event queue, kept between runs until close()

    def _executor(self):
        if self._live is None:
            slots, events = self.ctx.Queue(), self.ctx.Queue()
            for s in self.slots:
                slots.put(s)
            ex = ProcessPoolExecutor(len(self.slots), mp_context=self.ctx, initializer=_start,
                                     initargs=(slots, self.init, self.init_args, events))
            self._live = (ex, events)
        return self._live

    def close(self) -> None:
        """Stop the workers (they are kept between :meth:`run` calls: a search that runs in rounds pays their
        start-up, the parents read and the model loaded, once)."""
        if self._live is not None:
            self._live[0].shutdown(wait=True, cancel_futures=True)
            self._live = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, fn: Callable, tasks: Iterable[tuple[Hashable, tuple]],
            ) -> dict:
        """Run ``fn(state, *args)`` for each ``(key, args)`` of ``tasks`` on the workers; return
        ``{key: result}``. An exception raised by ``fn`` is re-raised here; a dead worker's task is run
        again by a fresh pool."""
        todo = dict(tasks)
        results: dict = {}
        attempts: dict = {}
        try:
            while todo:
                ex, events = self._executor()
                started: dict = {}
                try:
                    futures = {ex.submit(_call, fn, k, a): k for k, a in todo.items()}
                    while futures:
                        done, _ = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                        self._drain(events, started, results)
                        if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                            raise BrokenProcessPool("a worker died")
                        for fut in done:
                            key = futures.pop(fut)
                            self._take(key, fut.result(), results, todo, started)   # fn's own error raises here
                except BrokenProcessPool:
                    self.breaks += 1
                    for fut, key in futures.items():   # returned before the break: kept, not run again
                        if fut.done() and not fut.cancelled() and fut.exception() is None:
                            self._take(key, fut.result(), results, todo, started)
                    self._drain(events, started, results)
                    for key in started:   # in flight when a worker died: the dead one's task among them
                        attempts[key] = attempts.get(key, 0) + 1
                        if attempts[key] >= MAX_ATTEMPTS:
                            raise WorkerError(f"a worker died {attempts[key]} times while running {key} "
                                              "(killed, or out of memory?); giving up") from None
                    self.close()   # every worker of that pool has exited now; a fresh pool takes what is left
                    self._event("broken", None, None)
        except BaseException:   # fn's own error, a worker dying too often, Ctrl-C: the workers go with it
            self.close()
            raise
        return results

    def _take(self, key, result, results: dict, todo: dict, started: dict) -> None:
        results[key] = result
        todo.pop(key)
        started.pop(key, None)
        self._event("done", None, key)

    def _drain(self, events, started: dict, results: dict) -> None:
        while True:
            try:
                kind, pid, key = events.get_nowait()
            except (queue_mod.Empty, OSError, EOFError):
                return
            if key not in results:
                started[key] = pid
            self._event(kind, pid, key)

    def _event(self, kind: str, pid: int | None, key) -> None:
        if self.on_event is not None:
            self.on_event(kind, pid, key)
