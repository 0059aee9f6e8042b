"""Phase two on N local workers (``workers: N`` in the finetune run config): the (initialisation, shots) SFT
runs trained side by side, each in a worker process pinned to its GPU(s) (``sft.num_gpus`` each) or a share of
the cores, each with the memory check :func:`medmerge.finetune.sft.finetune` makes before it loads a weight.

Each finished SFT lands where :func:`medmerge.finetune.train.run_sft` looks for it (``output_dir/sft/<init>-
<shots>``, recorded with its identity: initialisation weights, examples, settings), and the worker then runs
the forgetting check's benchmarks on it into the evaluation cache. The pipeline's own per-(initialisation,
shots) steps run after it unchanged: ``sft`` finds the checkpoint finished and only logs it, ``evaluate_sft``
gets the benchmarks from the cache and generates. So the MLflow record, the steps and their cache keys are the
ones a one-worker run makes; what runs at once is the training and the benchmarks (generation stays in the
step, one (initialisation, shots) at a time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from medmerge.runtime import cost
from medmerge.runtime.workers import WorkerPool


def _no_state(slot):
    return slot


def _train(slot, cfg, init_path: str, examples: list, out: str, identity: str, few: bool, steps: int) -> dict:
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import evaluate_checkpoint
    from medmerge.finetune import train
    from medmerge.finetune.sft import finetune

    with cost.measuring("sft_train") as trained:   # the worker's own figures: the sft step logs them
        res = finetune(init_path, examples, out, cfg.sft, few_shot=few, max_steps=steps, overwrite=True)
    train._record_sft(Path(out), identity, replace(res, cost=trained.metrics()))
    evaluate_checkpoint(out, cfg.forgetting.eval_settings(), EvalCache())   # the forgetting check's "after"
    return {k: getattr(res, k) for k in ("steps", "train_loss", "seconds", "memory_estimate_gib")}


def jobs(cfg, data, subsets: dict[str, list[str]], inits: dict) -> list[tuple[str, tuple]]:
    """The SFT runs still to train: ``(name, (init path, examples, out dir, identity, few_shot, steps))`` for each
    (initialisation, shots) whose checkpoint is not already in ``output_dir/sft`` with the same identity."""
    from medmerge.finetune.config import ZERO_SHOT, shot_label
    from medmerge.finetune.sft import optimisation_steps
    from medmerge.finetune.train import _finished_sft, sft_identity

    by_id = {e.id: e for e in data.train}
    out = []
    for init in cfg.initialisations:
        for s in cfg.shots:
            shots = shot_label(s)
            if shots == ZERO_SHOT or shots not in subsets:   # no SFT; or the sft step names the missing subset
                continue
            model, ids = inits[init.name], subsets[shots]
            examples = [by_id[i] for i in ids]
            identity = sft_identity(cfg, model, ids, data)
            name = f"{init.name}-{shots}"
            target = Path(cfg.output_dir) / "sft" / name
            if _finished_sft(target, identity) is not None:
                continue
            few = shots != "full"
            steps = cfg.max_steps or optimisation_steps(len(examples), cfg.sft, few_shot=few)
            out.append((name, (cfg, model.path, examples, str(target), identity, few, steps)))
    return out


def train_all(cfg, data, subsets: dict[str, list[str]], inits: dict, workers: int,
              on_event: Callable | None = None) -> dict[str, dict]:
    """Train every SFT run of ``cfg`` not yet finished on ``workers`` local processes; ``{name: summary}``."""
    from medmerge.evaluation.runner import default_device

    todo = jobs(cfg, data, subsets, inits)
    if not todo:
        return {}
    with WorkerPool(min(workers, len(todo)), default_device(), _no_state, on_event=on_event,
                    gpus_per_worker=cfg.sft.num_gpus) as pool:
        return pool.run(_train, todo)
