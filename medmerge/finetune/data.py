"""The task's data: load both splits, opt-in cleaning, validation (the MLflow parent run opens here), few-shot
subsets."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from medmerge.finetune.artifacts import InitModel, TrackingRun, TrainingData
from medmerge.finetune.config import ZERO_SHOT, FinetuneConfig, FinetuneError, shot_label
from medmerge.generation.data import GenerationExample
from medmerge.runtime import cost
from medmerge.runtime.cost import measured


def _examples_sha(examples: list[GenerationExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.input, e.target], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def input_token_limit(cfg: FinetuneConfig, tokenizer_dir: str) -> tuple[object, int]:
    """The tokenizer and the longest input allowed: SFT's max length, the generation cap and the context."""
    from transformers import AutoConfig, AutoTokenizer

    from medmerge.merge.arch import context_length

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ctx = context_length(AutoConfig.from_pretrained(tokenizer_dir), tok)   # as medmerge validate-data counts it
    return tok, min(cfg.sft.max_length, cfg.generation.max_input_tokens, ctx or cfg.sft.max_length)


def _clean(examples: list[GenerationExample], cfg: FinetuneConfig, tokenizer, limit: int | None,
           split: str, dropped: dict[str, list[str]]) -> list[GenerationExample]:
    from medmerge.generation.validation import count_tokens

    if cfg.drop_duplicate_pairs:
        seen, kept = set(), []
        for e in examples:
            key = (e.input, e.target)
            if key in seen:
                dropped.setdefault(f"{split}: duplicate (input, target) pair", []).append(e.id)
            else:
                seen.add(key)
                kept.append(e)
        examples = kept
    if cfg.drop_overlong and tokenizer is not None and limit is not None:
        counts = count_tokens([e.input for e in examples], tokenizer)
        long = [e.id for e, n in zip(examples, counts) if n > limit]
        if long:
            dropped[f"{split}: input longer than {limit} tokens"] = long
            examples = [e for e, n in zip(examples, counts) if n <= limit]
    return examples


@measured("load_data")
def load_data(cfg: FinetuneConfig, inits: dict[str, InitModel] | None = None) -> TrainingData:
    """Read the train and held-out splits (errors name the file or task); apply the opt-in cleaning."""
    from medmerge.evaluation.tasks import resolve_data_dir
    from medmerge.generation.data import load_task

    kw: dict[str, Any] = dict(data_dir=resolve_data_dir(cfg.data_dir), id_field=cfg.id_field,
                              input_field=cfg.input_field, target_field=cfg.target_field)
    train = load_task(cfg.task, cfg.train_split, **kw)
    held = load_task(cfg.task, cfg.eval_split, **kw)
    if not held:
        raise FinetuneError(f"task {cfg.task}: no held-out examples in split {cfg.eval_split!r} "
                            f"(set eval_split: to the split to score on)")
    tokenizer = limit = None
    if inits:
        tokenizer, limit = input_token_limit(cfg, next(iter(inits.values())).path)
    dropped: dict[str, list[str]] = {}
    train = _clean(train, cfg, tokenizer, limit, cfg.train_split, dropped)
    held = _clean(held, cfg, tokenizer, limit, cfg.eval_split, dropped)
    if cfg.eval_limit is not None:
        held = held[:cfg.eval_limit]
    return TrainingData(task=cfg.task, train=train, eval=held, train_sha256=_examples_sha(train),
                        eval_sha256=_examples_sha(held), max_input_tokens=limit, dropped=dropped)


def run_key(cfg: FinetuneConfig, data: TrainingData) -> str:
    """What identifies a pipeline run's work: the config and the data (a rerun of it resumes)."""
    blob = json.dumps({"config": cfg.model_dump(mode="json"), "train": data.train_sha256, "eval": data.eval_sha256},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@measured("validate_data")
def validate_and_open_run(cfg: FinetuneConfig, data: TrainingData, inits: dict[str, InitModel],
                          run_name: str | None = None, tracking_uri: str | None = None) -> TrackingRun:
    """Validate both splits with great_expectations, then open (or resume) the MLflow parent run on
    ``tracking_uri`` (else the configured server) and log the reports to it. A failing dataset marks the run
    FAILED and raises, naming every failed expectation."""
    from medmerge.generation.validation import DataValidationError, validate_dataset
    from medmerge.tracking import registry

    # the longest input must fit SFT's max length, the generation cap and the first model's context
    tokenizer, limit = input_token_limit(cfg, next(iter(inits.values())).path)
    reports = [
        validate_dataset(data.train, name=f"{cfg.task}:{cfg.train_split}", min_rows=cfg.min_rows, max_rows=cfg.max_rows,
                         max_input_tokens=limit, tokenizer=tokenizer),
        validate_dataset(data.eval, name=f"{cfg.task}:{cfg.eval_split}", min_rows=1, max_input_tokens=limit,
                         tokenizer=tokenizer),
    ]
    uri = tracking_uri or cfg.resolved_tracking_uri()
    registry.check_reachable(uri)
    name = run_name or "finetune"
    run = open_parent_run(uri, cfg.experiment, run_key(cfg, data), f"{name}-{cfg.task_label}")
    cost.attach(uri, run.parent_run_id)
    parent = run.parent_run()
    for rep in reports:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", rep.dataset)
        parent.text(rep.to_markdown(), f"validation/{stem}.md")
        parent.text(rep.to_json(), f"validation/{stem}.json")
    failed = [r for r in reports if not r.success]
    if failed:
        parent.fail("data validation")
        raise DataValidationError("\n".join(r.failure_message() for r in failed) +
                                  f"\n(report: MLflow run {run.parent_run_id}, artifacts validation/)", report=failed[0])
    parent.params({"task": cfg.task, "shots": ",".join(shot_label(s) for s in cfg.shots),
                   "initialisations": ",".join(inits), "train_rows": len(data.train), "eval_rows": len(data.eval),
                   "train_sha256": data.train_sha256})
    from medmerge.tracking import datasets  # the splits as MLflow datasets: digests, never rows

    parent.datasets([
        (datasets.entity(f"{cfg.task}:{cfg.train_split}", data.train_sha256, f"{cfg.task} [{cfg.train_split}]",
                         len(data.train)), "training"),
        (datasets.entity(f"{cfg.task}:{cfg.eval_split}", data.eval_sha256, f"{cfg.task} [{cfg.eval_split}]",
                         len(data.eval)), "evaluation")])
    if data.dropped:  # ids only: no clinical text
        parent.json(data.dropped, "validation/dropped_ids.json")
        for reason, ids in data.dropped.items():
            parent.metric("dropped." + re.sub(r"[^A-Za-z0-9_]+", "_", reason).strip("_"), len(ids))
    parent.json({k: v.model_dump() for k, v in inits.items()}, "initialisations.json")
    return run


def open_parent_run(uri: str, experiment: str, key: str, run_name: str) -> TrackingRun:
    """The parent run with tag ``medmerge.run_key == key`` that has not finished, or a new one."""
    from medmerge.tracking import runs

    run, _ = runs.open_parent(uri, experiment, key, run_name, phase="finetune")
    return TrackingRun(tracking_uri=uri, experiment_id=run.experiment_id, parent_run_id=run.run_id)


@measured("subsample")
def subsample(cfg: FinetuneConfig, data: TrainingData) -> dict[str, list[str]]:
    """``{shots: [example ids]}``: nested, seeded subsets (sizes larger than the train split are dropped)."""
    from medmerge.generation.subsets import few_shot_subsets

    sizes = [s for s in cfg.shots if isinstance(s, int) and s != 0]   # "full" and 0 train on no subset
    too_big = [s for s in sizes if s > len(data.train)]
    if too_big:
        raise FinetuneError(f"shots {too_big} exceed the {len(data.train)} training examples of {cfg.task} "
                            f"[{cfg.train_split}]; drop those sizes (\"full\" uses them all)")
    subsets = few_shot_subsets(data.train, sizes, seed=cfg.subset_seed, include_full="full" in cfg.shots) \
        if sizes or "full" in cfg.shots else {}
    if not subsets and 0 not in cfg.shots:
        raise FinetuneError(f"no shot size fits the {len(data.train)} training examples (shots {list(cfg.shots)})")
    out = {shot_label(k): [e.id for e in v] for k, v in subsets.items()}
    if 0 in cfg.shots:
        out[ZERO_SHOT] = []
    return out
