"""The initialisations and, per (initialisation, shots): the baseline, SFT, generation, scores, the gate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from medmerge.evaluation.report import EvalReport
from medmerge.finetune.artifacts import InitModel, SFTCheckpoint, SFTResult, TrackingRun, TrainingData, TrainingLoss
from medmerge.finetune.config import MAX_LOGGED_SAMPLES, ZERO_SHOT, FinetuneConfig, FinetuneError, Initialisation
from medmerge.finetune.sft import SFTRun
from medmerge.runtime import cost
from medmerge.runtime.cost import measured


@measured("resolve_initialisations")
def resolve_initialisations(cfg: FinetuneConfig) -> dict[str, InitModel]:
    """Each initialisation as a local checkpoint with its weight hash (registry versions are downloaded)."""
    from medmerge.io import provenance
    from medmerge.merge.engine import open_parents

    out = {}
    for init in cfg.initialisations:
        path = str(_download_registered(cfg, init)) if init.model_uri else init.path
        if path is None:   # refused when the config is parsed: a path or a model_uri
            raise FinetuneError(f"initialisation {init.name!r} has neither a path nor a model_uri")
        prov = provenance.parent_provenance(open_parents([path], check=False))[path]
        out[init.name] = InitModel(name=init.name, path=prov["path"], sha256=provenance.checkpoint_sha256(prov["weights"]),
                                   source=init.model_uri or path)
    return out


def _download_registered(cfg: FinetuneConfig, init: Initialisation) -> Path:
    from medmerge.io.atomic import atomic_dir
    from medmerge.tracking import registry
    from medmerge.tracking.models import download_checkpoint

    uri = cfg.resolved_tracking_uri()
    registry.check_reachable(uri)
    model_uri = init.model_uri or ""
    try:
        mv = registry.model_version(uri, model_uri)
    except registry.RegistryError:
        raise  # the server is down: say so, not "not in the registry"
    except Exception as exc:
        raise FinetuneError(f"initialisation {init.name!r}: {init.model_uri} is not in the registry at {uri}") from exc
    dest = Path(cfg.output_dir) / "initialisations" / f"{mv.name}-v{mv.version}"
    if not (dest / "config.json").exists():
        with atomic_dir(dest, overwrite=True) as tmp, registry.unreachable_as_error(uri, f"downloading {model_uri.removeprefix('models:/')}"):
            got = download_checkpoint(mv, uri, Path(tmp))   # the MLflow Model's model/ folder
            if got != Path(tmp):  # the artifact folder lands inside tmp: lift its files up
                for f in got.iterdir():
                    f.rename(Path(tmp) / f.name)
                got.rmdir()
    return dest


# ---------------------------------------------------------------------------------------------
# one (initialisation, shots)
# ---------------------------------------------------------------------------------------------

@measured(lambda a: f"baseline.{a['init'].name}")
def evaluate_initialisation(cfg: FinetuneConfig, init: InitModel) -> EvalReport:
    """The initialisation's pre-SFT benchmark scores (the forgetting check's "before")."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import evaluate_checkpoint

    return evaluate_checkpoint(init.path, cfg.forgetting.eval_settings(), EvalCache())


def sft_identity(cfg: FinetuneConfig, init: InitModel, ids: list[str], data: TrainingData) -> str:
    blob = json.dumps({"init": init.sha256, "ids": ids, "train": data.train_sha256, "sft": cfg.sft.model_dump(),
                       "max_steps": cfg.max_steps}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


SFT_RECORD = "medmerge_sft.json"   # in a finished SFT checkpoint: its identity and losses


def _record_sft(out: Path, identity: str, res: SFTRun) -> None:
    """Record a finished SFT beside its checkpoint: its identity, losses and what training it cost
    (``SFTRun.cost``, measured where it trained), so a step that finds it finished logs the same."""
    from medmerge.io.atomic import write_text_atomic

    keep = {k: getattr(res, k) for k in ("steps", "train_loss", "first_loss", "last_loss", "losses", "cost")}
    write_text_atomic(out / SFT_RECORD, json.dumps({"identity": identity, **keep}))


def _finished_sft(out: Path, identity: str) -> SFTRun | None:
    """The recorded result of the SFT with this identity if ``out`` holds it, else None."""
    try:
        rec = json.loads((out / SFT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if rec.get("identity") != identity or not (out / "config.json").exists():
        return None
    return SFTRun.from_json({**rec, "out_dir": str(out)})


@measured("sft")
def run_sft(cfg: FinetuneConfig, data: TrainingData, subsets: dict[str, list[str]], init: InitModel, shots: str,
            run: TrackingRun) -> SFTCheckpoint:
    """Fine-tune ``init`` on the ``shots`` subset into ``output_dir/sft/<init>-<shots>``; open its nested run.
    A checkpoint there recorded with the same identity (init weights, examples, settings) is reused, not
    retrained: a run against another tracking server logs it there without training again."""
    from medmerge.finetune.sft import finetune, optimisation_steps

    if shots not in subsets:
        raise FinetuneError(f"{shots} shots: the training split has only {len(data.train)} examples")
    ids = subsets[shots]
    by_id = {e.id: e for e in data.train}
    examples = [by_id[i] for i in ids]
    few = shots != "full"
    zero = shots == ZERO_SHOT
    steps = 0 if zero else cfg.max_steps or optimisation_steps(len(examples), cfg.sft, few_shot=few)
    identity = sft_identity(cfg, init, ids, data)
    name = f"{init.name}-{shots}"
    parent = run.parent_run()
    # a killed run left this (init, shots) run unfinished under the same parent: resume it, as the parent is
    nested = parent.nested_by_key(name, "medmerge.identity", identity, {"initialisation": init.name, "shots": shots})
    rid = nested.run_id
    cost.attach(run.tracking_uri, rid, run.parent_run_id)
    with nested.failing_on_error():
        nested.params({"initialisation": init.name, "init_source": init.source, "shots": shots,
                       "n_examples": len(examples), "steps": steps, "lora": cfg.sft.lora,
                       "learning_rate": cfg.sft.learning_rate, "per_device_batch": cfg.sft.per_device_batch,
                       "grad_accum": cfg.sft.grad_accum, "max_length": cfg.sft.max_length, "seed": cfg.sft.seed})
        out = Path(cfg.output_dir) / "sft" / name
        res = _finished_sft(out, identity)  # the same SFT finished before (logged to another server, say)
        if zero:  # no SFT: the initialisation itself is generated from and scored
            out, res = Path(init.path), SFTRun(steps=0, train_loss=None, out_dir=init.path)
        elif res is None:
            with cost.measuring("sft_train") as trained:
                res = finetune(init.path, examples, out, cfg.sft, few_shot=few, max_steps=steps, overwrite=True)
            res = replace(res, cost=trained.metrics())
            _record_sft(out, identity, res)
        nested.metrics(res.cost)   # what the training cost, wherever it ran (this step, a worker, an earlier run)
        nested.series("train_loss_step", res.losses)
        if res.train_loss is not None:
            nested.metric("train_loss", res.train_loss)
        if res.dtype:  # the dtype SFT trained in (auto resolved)
            nested.param("dtype", res.dtype)
        nested.metrics({f"sft_{k}": getattr(res, k) for k in ("memory_estimate_gib", "samples_per_second")
                        if getattr(res, k) is not None})
    return SFTCheckpoint(init=init.name, shots=shots, n_examples=len(examples), path=str(out.resolve()),
                         identity=identity, run_id=rid, steps=steps,
                         loss=TrainingLoss(mean=res.train_loss, first=res.first_loss, last=res.last_loss))


@measured("evaluate_sft", run=lambda a: (a["run"].tracking_uri, a["ckpt"].run_id, a["run"].parent_run_id))
def evaluate_sft(cfg: FinetuneConfig, data: TrainingData, ckpt: SFTCheckpoint, before: EvalReport,
                 run: TrackingRun) -> SFTResult:
    """Generate on the held-out split, score it, re-run the benchmarks and apply the forgetting gate;
    log everything to the (init, shots) run and close it."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.report import samples_jsonl
    from medmerge.evaluation.runner import (
        PROMPT_FORMAT,
        default_device,
        evaluate_checkpoint,
        guard_finite_logits,
        load_model,
        model_dtype,
    )
    from medmerge.finetune.forgetting import forgetting_gate
    from medmerge.generation.generate import generate
    from medmerge.generation.metrics import composite
    from medmerge.tracking import registry, runs

    nested = runs.Run(run.tracking_uri, ckpt.run_id, run.experiment_id)
    rid = ckpt.run_id
    with nested.failing_on_error():
        model, tok = load_model(ckpt.path, default_device(), dtype=cfg.generation.dtype)
        guard_finite_logits(model, lambda: f"{ckpt.init}-{ckpt.shots} ({ckpt.path})")   # never scored, never registered
        gen_dtype = model_dtype(model)
        gens = generate(model, tok, data.eval, cfg.generation, instruction=cfg.sft.instruction)
        del model
        scores = composite(gens.predictions, [e.target for e in data.eval], **cfg.bertscore_kwargs())
        numeric = {k: float(v) for k, v in scores.items() if k not in ("bertscore_model", "bertscore_layer")}
        after = evaluate_checkpoint(ckpt.path, cfg.forgetting.eval_settings(), EvalCache())
        gate = forgetting_gate(before, after, margin=cfg.forgetting.margin)

        nested.metrics({**numeric, "n_examples": ckpt.n_examples, "generation_seconds": gens.seconds,
                        "truncated_inputs": gens.truncated_inputs, "generation_new_tokens": gens.new_tokens})
        if gens.max_new_tokens:  # below generation.max_new_tokens where the context capped it (logged too)
            nested.metric("generation_max_new_tokens", min(gens.max_new_tokens))
        if gens.seconds > 0:
            nested.metric("generation_tokens_per_second", gens.new_tokens / gens.seconds)
        nested.metrics({f"after.{k}": v for k, v in registry.report_metrics(after).items()})
        nested.metric("forgetting_failures", len(gate.failures))
        nested.params({"generation_dtype": gen_dtype, "eval_dtype": after.settings.get("dtype"),
                       "bertscore_model": scores["bertscore_model"], "bertscore_layer": scores["bertscore_layer"],
                       **{f"eval_{k}": str(getattr(cfg.forgetting, k)) for k in PROMPT_FORMAT}})
        for task, result in after.tasks.items():   # the benchmarks' per-sample records: only when asked
            if (records := result.sample_records()) is not None:
                nested.text(samples_jsonl(records), f"forgetting_samples/samples_{task}.jsonl")
        nested.tag("forgetting_gate", "passed" if gate.passed else "failed")
        nested.text(gate.table() + "\n", "forgetting.txt")
        nested.json(gate.model_dump(mode="json"), "forgetting.json")
        if cfg.log_samples:   # clinical text: only when asked, at most MAX_LOGGED_SAMPLES rows
            n = min(cfg.log_samples, MAX_LOGGED_SAMPLES, len(data.eval))
            nested.json([{"id": e.id, "input": e.input[:2000], "target": e.target, "prediction": p}
                         for e, p in zip(data.eval[:n], gens.predictions[:n])], "samples.json")
    nested.finish()
    return SFTResult(task=cfg.task_label, init=ckpt.init, shots=ckpt.shots, n_examples=ckpt.n_examples, run_id=rid, scores=numeric,
                     bertscore_model=scores["bertscore_model"], bertscore_layer=scores["bertscore_layer"],
                     truncated_inputs=gens.truncated_inputs, forgetting=gate, after=after)
