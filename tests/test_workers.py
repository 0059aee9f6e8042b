"""medmerge.runtime.workers: slots pinned to devices, and a pool whose dead worker's task another worker runs."""

from __future__ import annotations

import os
import signal
import time

import pytest

from medmerge.runtime.workers import (
    MAX_ATTEMPTS,
    WorkerError,
    WorkerPool,
    current_slot,
    plan_slots,
)


def test_cpu_slots_share_the_cores():
    slots = plan_slots(2, "cpu", cores=2)
    assert [(s.index, s.device, s.threads) for s in slots] == [(0, "cpu", 1), (1, "cpu", 1)]
    assert slots[0].env["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in slots[0].env
    assert [s.threads for s in plan_slots(3, "cpu", cores=16)] == [5, 5, 5]
    assert [s.threads for s in plan_slots(4, "cpu", cores=2)] == [1, 1, 1, 1]   # never zero threads


def test_cuda_slots_one_visible_gpu_each(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = plan_slots(3, "cuda", cores=12)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "5", "3"]   # round robin past the count
    assert {s.device for s in slots} == {"cuda"} and {s.threads for s in slots} == {4}
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in plan_slots(2, "cuda:1")] == ["5", "5"]   # the one named
    with pytest.raises(WorkerError, match="only 2 GPU"):
        plan_slots(2, "cuda:2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(WorkerError, match="no GPU is visible"):
        plan_slots(2, "cuda")
    with pytest.raises(WorkerError, match="at least 1"):
        plan_slots(0, "cpu")


# Worker-side functions (module level: the spawned workers import them by name).
def _state(slot, tag):
    return {"tag": tag, "pid": os.getpid(), "slot": slot.index, "threads": os.environ["OMP_NUM_THREADS"],
            "built": time.time()}


def _work(state, x, seconds):
    time.sleep(seconds)
    return {"x": x * x, "pid": state["pid"], "built": state["built"], "slot": current_slot().index,
            "threads": os.environ["OMP_NUM_THREADS"], "tag": state["tag"]}


def test_pool_state_built_once_per_worker_and_dead_worker_task_rerun():
    """Two workers; the first task is SIGKILLed while it runs: a fresh pool runs it again, every task's
    result is counted once, and each worker built its state once for all its tasks."""
    events, killed = [], []

    def on_event(kind, pid, key):
        events.append((kind, pid, key))
        if kind == "start" and key == 2 and not killed:
            killed.append(pid)
            os.kill(pid, signal.SIGKILL)

    pool = WorkerPool(2, "cpu", _state, ("t",), on_event=on_event, cores=2)
    out = pool.run(_work, [(i, (i, 1.0 if i == 2 else 0.2)) for i in range(6)])
    assert {k: v["x"] for k, v in out.items()} == {i: i * i for i in range(6)}
    assert pool.breaks == 1 and killed
    assert out[2]["pid"] != killed[0]                      # run again by another worker
    assert [k for kind, _, k in events if kind == "done"].count(2) == 1
    assert sorted(k for kind, _, k in events if kind == "done") == list(range(6))
    for r in out.values():   # pinned: one thread each (torch reads OMP_NUM_THREADS when imported), slot 0 or 1
        assert r["threads"] == "1" and r["slot"] in (0, 1) and r["tag"] == "t"
    by_pid = {}
    for r in out.values():
        by_pid.setdefault(r["pid"], set()).add(r["built"])
    assert all(len(b) == 1 for b in by_pid.values())       # a worker built its state once
    pool.close()


def test_workers_are_kept_between_runs_until_closed():
    """A search in rounds calls run() once a round: the same workers (and the state each built) serve every
    round; close() stops them."""
    with WorkerPool(2, "cpu", _state, ("t",), cores=2) as pool:
        first = pool.run(_work, [(i, (i, 0.1)) for i in range(4)])
        second = pool.run(_work, [(i, (i, 0.1)) for i in range(4, 8)])
        pids = {r["pid"] for r in first.values()}
        assert {r["pid"] for r in second.values()} <= pids and len(pids) <= 2
        assert len({(r["pid"], r["built"]) for r in [*first.values(), *second.values()]}) == len(pids)
    assert pool._live is None
    for pid in pids:   # stopped (and reaped) by close()
        with pytest.raises(ProcessLookupError, match="No such process"):
            os.kill(pid, 0)


def test_a_task_that_kills_its_worker_each_time_fails_the_run():
    def on_event(kind, pid, key):
        if kind == "start" and key == "bad":
            os.kill(pid, signal.SIGKILL)

    pool = WorkerPool(2, "cpu", _state, ("t",), on_event=on_event, cores=2)
    with pytest.raises(WorkerError, match=f"died {MAX_ATTEMPTS} times while running bad"):
        pool.run(_work, [("bad", (1, 2.0))])


def test_search_config_workers_domain():
    from factory import DEMO_SWEEP
    from pydantic import ValidationError

    from medmerge.selection.search import SearchConfig

    sweep = {"clinical": "c", "instruct": "i", **DEMO_SWEEP}
    assert SearchConfig(sweep=sweep).workers == 1
    with pytest.raises(ValidationError, match="workers\n  Input should be greater than or equal to 1"):
        SearchConfig(sweep=sweep, workers=0)


def test_shards_partition_the_sweep_and_gather_restores_its_order():
    from factory import DEMO_SWEEP

    from medmerge.errors import MedmergeError
    from medmerge.selection.parallel_search import gather, shard_candidates
    from medmerge.selection.search import SearchConfig

    spec = SearchConfig(sweep={"clinical": "c", "instruct": "i", **DEMO_SWEEP}).sweep
    names = [c.name for c in spec.evaluated_candidates()]
    parts = [shard_candidates(spec, i, 4) for i in range(4)]
    assert sorted(c.name for p in parts for c in p) == sorted(names) and len(names) == 6
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    shards = [[(c, f"report of {c.name}") for c in reversed(p)] for p in reversed(parts)]
    assert [(c.name, r) for c, r in gather(spec, shards)] == [(n, f"report of {n}") for n in names]
    with pytest.raises(MedmergeError, match=f"did not evaluate {names[2]}"):
        gather(spec, [s for s in shards if names[2] not in {c.name for c, _ in s}])   # its shard lost
    with pytest.raises(MedmergeError, match=f"{names[0]} was evaluated by two shards"):
        gather(spec, shards + [[(parts[0][0], "again")]])
    with pytest.raises(ValueError, match="shard 4 of 4"):
        shard_candidates(spec, 4, 4)


def test_cuda_slots_with_several_gpus_per_worker(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4")
    slots = plan_slots(2, "cuda", cores=8, gpus_per_worker=2)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3"]
    with pytest.raises(WorkerError, match="3 workers with 2 GPUs each need 6 GPUs; 5 visible"):
        plan_slots(3, "cuda", gpus_per_worker=2)
