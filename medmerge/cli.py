"""The ``medmerge`` command line. Bad input exits 2 with one line naming the problem.

Arguments are parsed by one parser per kind (:mod:`medmerge.io.args`: sizes, counts, memory figures);
every path a command writes is checked before any work (:mod:`medmerge.io.atomic`). :func:`main` turns
every error into one line: a :class:`MedmergeError`, a usage error or an ``OSError`` (the path and the
reason in words) exit 2; anything else exits 1 as an internal error. ``--debug`` (or
``MEDMERGE_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from medmerge.errors import MedmergeError
from medmerge.io.args import BATCH_SIZE, GIB, PORT, SIZE, count

_common = [
    click.option("--allow-pickle", is_flag=True, help="Read pickle .bin weights (can execute code: trusted files only)."),
    click.option("--trust-remote-code", is_flag=True, help="Let transformers run code shipped with a model."),
    click.option("--overwrite", is_flag=True, help="Replace an existing output directory."),
    click.option("--max-shard-size", type=SIZE, default="5GB", show_default=True,
                 help="Largest safetensors shard (e.g. 500MB, 2GiB, or bytes)."),
    click.option("--chunk-size", type=SIZE, default="8MiB", show_default=True,
                 help="Row-separable methods stream tensors larger than this in row blocks."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
]


def _prefetch_hashes(config: Path, keys) -> None:
    """Start hashing local parents' weight files before the heavy imports (they use one core).
    Best effort: a config that does not parse here is reported properly by the real loader."""
    import yaml

    from medmerge.io.hashing import prefetch

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):   # ValueError: UnicodeDecodeError of a binary file
        return
    if not isinstance(data, dict):
        return
    for key in keys:
        ref = data.get(key)
        if isinstance(ref, str) and Path(ref).is_dir():
            prefetch(sorted(Path(ref).glob("*.safetensors")))


def common_options(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medmerge")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error (for bug reports); or set "
                                            "MEDMERGE_DEBUG=1.")
def cli(debug):
    """medmerge: adapt open LLMs to clinical work by merging weights instead of retraining."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--random-seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Seed for dare_*/della* (overrides the recipe's).")
@common_options
def merge(config, out_dir, random_seed, allow_pickle, trust_remote_code, overwrite, max_shard_size, chunk_size,
          quiet):
    """Merge the models of a mergekit YAML CONFIG into a checkpoint at OUT_DIR."""
    from medmerge.merge.engine import merge as run_merge
    from medmerge.merge.recipe import load_recipe

    recipe = load_recipe(config)
    if random_seed is not None:
        recipe = recipe.model_copy(update={"random_seed": random_seed})
    out = run_merge(recipe, out_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                    overwrite=overwrite, max_shard_bytes=max_shard_size, chunk_bytes=chunk_size, quiet=quiet,
                    source=str(config))
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("sweep_config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@common_options
def sweep(sweep_config, out_dir, allow_pickle, trust_remote_code, overwrite, max_shard_size, chunk_size, quiet):
    """Write every candidate of a sweep to OUT_DIR/<candidate>/, reading parents once.

    SWEEP_CONFIG is a ratio grid (methods: [linear, slerp], ratios: [...]) or a methods grid
    (methods: {dare_ties: {density: [0.6, 0.8]}, hierarchical_ot: {}}, or preset: hierarchical-study-methods)."""
    _prefetch_hashes(sweep_config, ("clinical", "instruct", "base"))
    from medmerge.merge.engine import sweep as run_sweep
    from medmerge.merge.recipe import load_sweep

    spec = load_sweep(sweep_config)
    outs = run_sweep(spec, out_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                     overwrite=overwrite, max_shard_bytes=max_shard_size, chunk_bytes=chunk_size, quiet=quiet,
                     source=str(sweep_config))
    click.echo(f"wrote {len(outs)} candidates to {out_dir}:")
    for name in outs:
        click.echo(f"  {name}")


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--scan-values", is_flag=True, help="Also read every tensor and refuse NaN/Inf.")
@click.option("--allow-pickle", is_flag=True)
def check(models, scan_values, allow_pickle):
    """Check that MODELS can be merged with each other."""
    from medmerge.merge.compat import check_compatible
    from medmerge.merge.engine import open_parents

    parents = open_parents(list(models), allow_pickle=allow_pickle, check=False)
    check_compatible(list(parents.values()), scan_values=scan_values)
    click.echo(f"compatible: {', '.join(models)}")


@cli.command()
def methods():
    """List merge methods with their declared parameters."""
    from medmerge.merge.methods import METHODS

    for m in METHODS.values():
        params = ", ".join(
            f"{p.name}{'[per model]' if p.per_model else ''}{'' if p.required else '=' + repr(p.default)}"
            for p in m.params
        )
        base = "base required" if m.needs_base else "no base"
        click.echo(f"{m.name:18s} {m.pretty_name} ({base}); parameters: {params}")


def _eval_options(f):
    opts = [
        click.option("--suite", "suites", default="clinical,ifeval", show_default=True,
                     help="Comma-separated suites: clinical, ifeval, medical5, mmlu_pro_stock (tasks/suites.yaml)."),
        click.option("--data-dir", default=None, envvar="MEDMERGE_DATA_DIR",
                     help="Local data directory ('sample' = the sample shipped for the demo); default: the Hub."),
        click.option("--limit", type=count(1), default=None, help="First N documents of each task (N >= 1)."),
        click.option("--num-fewshot", type=count(0), default=None, help="Override every suite's shots (>= 0)."),
        click.option("--batch-size", type=BATCH_SIZE, default="8", show_default=True,
                     help="A whole number >= 1 or 'auto'."),
        click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
                     help="vllm serves the generation tasks (needs a GPU and vllm)."),
        click.option("--device", default="cpu", show_default=True),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="auto: the checkpoint's dtype on CUDA, float32 on a CPU."),
        click.option("--max-gen-toks", type=count(1), default=None, help="Default: min(1280, context/2)."),
        click.option("--no-cache", is_flag=True, help="Ignore and do not fill the evaluation cache."),
        click.option("--chat-template", type=click.Choice(["none", "auto", "true"]), default="none",
                     show_default=True, help="Format prompts with the tokenizer's chat template (lm-eval's "
                     "--apply_chat_template); auto: when the tokenizer has one."),
        click.option("--fewshot-as-multiturn/--no-fewshot-as-multiturn", default=None,
                     help="Shots as chat turns (lm-eval's default when a chat template is applied)."),
        click.option("--system-instruction", default=None, help="A system instruction before every prompt."),
        click.option("--log-samples", is_flag=True, help="Also write lm-eval's per-sample records (prompts, "
                     "responses, scores) beside the report: clinical text, off by default."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _eval_settings(suites, data_dir, limit, num_fewshot, batch_size, backend, device, max_gen_toks, dtype="auto",
                   chat_template="none", fewshot_as_multiturn=None, system_instruction=None, log_samples=False):
    from medmerge.evaluation.runner import EvalSettings
    from medmerge.evaluation.tasks import resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    return EvalSettings(
        suites=tuple(s.strip() for s in suites.split(",") if s.strip()), data_dir=data_dir, limit=limit,
        num_fewshot=num_fewshot, batch_size=batch_size,
        backend=backend, device=device, max_gen_toks=max_gen_toks, dtype=dtype, chat_template=chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn, system_instruction=system_instruction, log_samples=log_samples,
    )


@cli.command()
@click.argument("model_dir")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Report JSON.")
@click.option("--trust-remote-code", is_flag=True)
@_eval_options
def evaluate(model_dir, out, trust_remote_code, suites, data_dir, limit, num_fewshot, batch_size, backend, device,
             dtype, max_gen_toks, no_cache, **prompt):
    """Score a checkpoint on benchmark suites; print a table and write a JSON report (with --log-samples,
    lm-eval's per-sample records too, in OUT's name + '_samples/')."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import evaluate_checkpoint
    from medmerge.io.atomic import check_output_file

    check_output_file(out, protect=[model_dir], protect_what="model", replaceable=_is_eval_report,
                      label="report file")
    samples = out.with_name(f"{out.stem}_samples")
    if prompt["log_samples"] and samples.exists() and not samples.is_dir():
        raise MedmergeError(f"--log-samples writes the records to {samples}/, which is a file")
    settings = _eval_settings(suites, data_dir, limit, num_fewshot, batch_size, backend, device, max_gen_toks, dtype,
                              **prompt)
    report = evaluate_checkpoint(model_dir, settings, cache=None if no_cache else EvalCache(),
                                 trust_remote_code=trust_remote_code)
    click.echo(report.table())
    report.write_samples(samples)
    report.write(out)
    click.echo(f"wrote {out} ({report.seconds:.1f} s)")


@cli.command("evaluate-sweep")
@click.argument("sweep_config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for one report JSON per candidate.")
@_eval_options
def evaluate_sweep_cmd(sweep_config, out, suites, data_dir, limit, num_fewshot, batch_size, backend, device,
                       dtype, max_gen_toks, no_cache, **prompt):
    """Evaluate every candidate of a sweep in memory (nothing written but the reports)."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.sweep_eval import evaluate_sweep
    from medmerge.io.atomic import check_output_file, output_container
    from medmerge.merge.recipe import load_sweep

    spec = load_sweep(sweep_config)
    settings = _eval_settings(suites, data_dir, limit, num_fewshot, batch_size, backend, device, max_gen_toks, dtype,
                              **prompt)
    inputs = [*spec.parent_refs, sweep_config]
    for cand in spec.candidates():
        check_output_file(Path(out) / f"{cand.name}.json", protect=inputs, protect_what="input",
                          replaceable=_is_eval_report, label="report file")
    cache = None if no_cache else EvalCache()
    rows = []
    with output_container(out, protect=inputs, protect_what="input", label="report directory"):
        for cand, report in evaluate_sweep(spec, settings, cache):
            report.write_samples(Path(out) / f"{cand.name}_samples")
            report.write(Path(out) / f"{cand.name}.json")
            rows.append((cand.name, report.medical_avg, report.if_score, len(report.cached_tasks)))
    click.echo(f"{'candidate':14s} {'Medical Avg':>11s} {'IF score':>9s}  cached tasks")
    for name, med, ifs, cached in rows:
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        click.echo(f"{name:14s} {fmt(med):>11s} {fmt(ifs):>9s}  {cached}")
    if cache is not None:
        click.echo(f"cache: {cache.hits} hits, {cache.misses} misses")


def _is_eval_report(p: Path) -> bool:
    """A report `medmerge evaluate` wrote (so writing it again replaces only medmerge's own file)."""
    from medmerge.io.atomic import json_file_with

    return json_file_with("medmerge_version", "lm_eval_version", "tasks")(p)


def _is_validation_report(p: Path) -> bool:
    from medmerge.io.atomic import json_file_with, text_file_starting

    if p.suffix.lower() == ".json":
        return json_file_with("dataset", "expectations", "success")(p)
    return text_file_starting("## Data validation: ")(p)


# --- validate-data -----------------------------------------------------------------------------

_REPORT_FORMATS = {".md": "markdown", ".markdown": "markdown", ".json": "json"}


def _load_tokenizer(ref: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError, ValueError, hub errors offline: all mean "cannot use it"
        raise MedmergeError(f"cannot load tokenizer {ref!r}: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
            from exc


def _model_config(ref: str, trust_remote_code: bool):
    """``ref``'s model config, or None (a tokenizer-only directory has no config.json)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001  (any failure means: no config to read the context from)
        return None


@cli.command("sft-memory")
@click.argument("model")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="auto: the checkpoint's dtype on CUDA, float32 on a CPU.")
@click.option("--lora", is_flag=True, help="Train a LoRA adapter (rank --lora-r) instead of every weight.")
@click.option("--lora-r", type=count(1), default=16, show_default=True)
@click.option("--optim", type=click.Choice(["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"]),
              default="adamw_torch", show_default=True)
@click.option("--no-gradient-checkpointing", is_flag=True)
@click.option("--per-device-batch", type=count(1), default=4, show_default=True)
@click.option("--max-length", type=count(1), default=8192, show_default=True)
@click.option("--num-gpus", type=count(1), default=1, show_default=True,
              help="> 1: sharded with FSDP / ZeRO-3.")
@click.option("--device-memory-gib", type=GIB, default=None,
              help="The device's size in GiB, a finite number above zero (default: detected).")
def sft_memory(model, dtype, lora, lora_r, optim, no_gradient_checkpointing, per_device_batch, max_length, num_gpus,
               device_memory_gib):
    """Estimate the memory SFT of MODEL needs (from its config.json; no weights read); exit 2 if it cannot fit."""
    from medmerge.finetune.sft import SFTSettings, check_memory
    from medmerge.finetune.sft_memory import gib

    settings = SFTSettings(dtype=dtype, lora=lora, lora_r=lora_r, optim=optim,
                           gradient_checkpointing=not no_gradient_checkpointing, per_device_batch=per_device_batch,
                           max_length=max_length, num_gpus=num_gpus, device_memory_gib=device_memory_gib)
    est = check_memory(model, settings)
    click.echo(f"fits: about {gib(est.per_device)}{' per GPU' if num_gpus > 1 else ''} ({est.breakdown()})")


@cli.command("validate-data")
@click.argument("source")
@click.option("--split", default=None,
              help="Known task: the split file (default: train; 'test' = every test* file). "
                   "File: keep rows whose 'split' column equals this (default: all rows).")
@click.option("--data-dir", default=None, help="Directory of known tasks (<dir>/<task>/<split>.jsonl); "
                                               "default: $MEDMERGE_DATA_DIR.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "tsv"]), default=None,
              help="File format when the suffix does not tell.")
@click.option("--id-field", default="id", show_default=True)
@click.option("--input-field", default="input", show_default=True)
@click.option("--target-field", default="target", show_default=True)
@click.option("--tokenizer", "tokenizer_ref", default=None, metavar="MODEL_DIR_OR_HUB_ID",
              help="Count input tokens with this tokenizer (and check them against the context).")
@click.option("--max-input-tokens", type=count(1), default=None,
              help="Longest allowed input in tokens; default with --tokenizer: the model's context length.")
@click.option("--min-rows", type=count(0), default=1, show_default=True)
@click.option("--max-rows", type=count(0), default=None)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the report, as Markdown (.md) or JSON (.json); written on failure too.")
@click.option("--trust-remote-code", is_flag=True, help="Let transformers run code shipped with the tokenizer.")
def validate_data(source, split, data_dir, fmt, id_field, input_field, target_field, tokenizer_ref,
                  max_input_tokens, min_rows, max_rows, report, trust_remote_code):
    """Check a generation dataset before fine-tuning: SOURCE is a known task name or a JSONL/CSV file.

    Checks the id/input/target columns, unique ids, non-empty inputs and targets, unique
    (input, target) pairs, the row count and (with --tokenizer) that every input fits the
    context. Exit 0 when every expectation holds, 2 with the failures and offending ids otherwise."""
    # load_task's DataErrors (missing file, bad line, missing columns) reach main() and exit 2
    from medmerge.generation.data import TASKS, load_task
    from medmerge.generation.validation import DataValidationError, validate_dataset
    from medmerge.io.atomic import write_text_atomic

    report_kind = None
    if report is not None:
        report_kind = _REPORT_FORMATS.get(report.suffix.lower())
        if report_kind is None:
            raise click.BadParameter(f"{report}: use a .md or .json file name", param_hint="'--report'")
        from medmerge.io.atomic import check_output_file

        check_output_file(report, protect=[source] + ([data_dir] if data_dir else []), protect_what="data",
                          replaceable=_is_validation_report, label="report file")
    if max_input_tokens is not None and tokenizer_ref is None:
        raise click.UsageError("--max-input-tokens needs --tokenizer (to count the tokens)")
    if max_rows is not None and max_rows < min_rows:
        raise click.UsageError(f"--max-rows ({max_rows}) < --min-rows ({min_rows})")

    is_task = source in TASKS and not Path(source).is_file()
    if split is None and is_task:
        split = "train"
    name = f"{source} [{split}]" if split else source

    tokenizer = None
    if tokenizer_ref is not None:
        tokenizer = _load_tokenizer(tokenizer_ref, trust_remote_code)
        if max_input_tokens is None:
            from medmerge.merge.arch import context_length  # the finetune pipeline's data check counts the same

            max_input_tokens = context_length(_model_config(tokenizer_ref, trust_remote_code), tokenizer)
            if max_input_tokens is None:
                raise MedmergeError(f"cannot tell the context length of {tokenizer_ref!r} (no model_max_length, "
                                    f"no max_position_embeddings); pass --max-input-tokens")

    examples = load_task(source, split, data_dir=data_dir, id_field=id_field, input_field=input_field,
                         target_field=target_field, fmt=fmt)
    if examples:
        data = examples
    else:  # no rows also means no columns: validate an empty frame so only row_count fails
        import pandas as pd

        data = pd.DataFrame({"id": pd.Series(dtype=str), "input": pd.Series(dtype=str),
                             "target": pd.Series(dtype=str)})
    result = validate_dataset(data, name=name, min_rows=min_rows, max_rows=max_rows,
                              max_input_tokens=max_input_tokens, tokenizer=tokenizer)
    if report is not None:
        write_text_atomic(report, result.to_markdown() if report_kind == "markdown" else result.to_json() + "\n")
    if not result.success:
        message = result.failure_message()
        if not examples:
            where = f" (split {split!r})" if split else ""
            message = f"{source}{where}: no rows (empty dataset)\n{message}"
        raise DataValidationError(message, report=result)

    n = len(result.expectations)
    line = f"ok: dataset {name!r}: {result.n_rows} rows, {n}/{n} expectations met"
    if max_input_tokens is not None:
        observed = result.outcome("input_fits_context").observed_value
        longest = observed.get("max_input_tokens") if isinstance(observed, dict) else None
        if longest is not None:
            line += f"; longest input {longest} tokens <= {max_input_tokens}"
    click.echo(line)
    if report is not None:
        click.echo(f"wrote {report}")


@cli.group()
def server():
    """Start, stop or inspect the local MLflow tracking server."""


_state_opt = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                          default=Path(".medmerge") / "mlflow", show_default=True,
                          help="Where the server keeps its PID, log, sqlite store and artifacts.")


@server.command("start")
@_state_opt
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=PORT, default=5000, show_default=True, help="0 picks a free port.")
@click.option("--backend-store-uri", default=None, help="Default: sqlite in the state dir (PostgreSQL URIs work).")
@click.option("--artifacts-destination", default=None, help="Default: artifacts/ in the state dir.")
@click.option("--basic-auth", is_flag=True, help="Serve MLflow's basic-auth app.")
def server_start(state_dir, host, port, backend_store_uri, artifacts_destination, basic_auth):
    """Start the server in the background (or report the one already running)."""
    from medmerge.tracking.server import start

    info = start(state_dir, host=host, port=port or None, backend_store_uri=backend_store_uri,
                 artifacts_destination=artifacts_destination, app_name="basic-auth" if basic_auth else None)
    click.echo(f"mlflow server running at {info.uri} (pid {info.pid}; log {info.log})")


@server.command("stop")
@_state_opt
def server_stop(state_dir):
    """Stop the server started from this state dir."""
    from medmerge.tracking.server import stop

    info = stop(state_dir)
    click.echo(f"stopped mlflow server {info.uri} (pid {info.pid})" if info else "no mlflow server running")


@server.command("status")
@_state_opt
def server_status(state_dir):
    """Say whether the server is running, and where; exit 1 if it is not."""
    from medmerge.tracking.server import healthy, status

    info = status(state_dir)
    if info is None:
        click.echo("no mlflow server running")
        raise click.exceptions.Exit(1)
    click.echo(f"mlflow server at {info.uri} (pid {info.pid}): {'healthy' if healthy(info.uri) else 'not answering'}")


def _tracking_uri(uri: str | None, state_dir: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the local server started by `medmerge server start`."""
    from medmerge.tracking.names import configured_tracking_uri
    from medmerge.tracking.server import status

    uri = uri or configured_tracking_uri()
    if uri:
        return uri
    info = status(state_dir)
    if info is None:
        raise MedmergeError("no tracking URI: pass --tracking-uri, set MLFLOW_TRACKING_URI, or run medmerge server start")
    return info.uri


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--stage", type=click.Choice(["staging", "production"]), default="staging", show_default=True)
@click.option("--tracking-uri", default=None)
@click.option("--force", is_flag=True, help="Promote even though the version's forgetting gate failed (recorded).")
@_state_opt
def promote(name, version, stage, tracking_uri, force, state_dir):
    """Promote registered model NAME's VERSION: alias @STAGE and the stage in the MLflow UI.

    Refuses a missing version, one whose run did not finish, and a fine-tuned version whose
    forgetting gate failed (unless --force)."""
    from medmerge.tracking.registry import check_reachable
    from medmerge.tracking.registry import promote as do_promote

    uri = _tracking_uri(tracking_uri, state_dir)
    check_reachable(uri)
    reason = do_promote(name, version, uri, stage=stage, force=force)
    click.echo(f"promoted to {stage}: {reason}")
    click.echo(f"models:/{name}@{stage} -> version {version}")


def _is_demo_sweep(p: Path) -> bool:
    """The sweep.yml `medmerge demo-models` wrote."""
    import yaml

    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    return isinstance(data, dict) and set(data) == {"clinical", "instruct", "base", "methods", "ratios"}


@cli.command("demo-models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@click.option("--no-cache", is_flag=True,
              help="build afresh instead of copying the build cached for this code and seed "
                   "($MEDMERGE_DEMO_MODELS_CACHE, default ~/.cache/medmerge/demo-models)")
def demo_models(out_dir, seed, quiet, no_cache):
    """Build the tiny base/clinical/instruct demo checkpoints (offline) and a sweep.yml for them."""
    import yaml

    from medmerge.demo import build_demo_models
    from medmerge.demo.cache import copy_demo_models
    from medmerge.io.atomic import check_output_dir, check_output_file, output_container, write_text_atomic

    # the three models are always rebuilt: each may replace only a demo model medmerge wrote there before
    check_output_dir(out_dir, container=True)
    for name in ("base", "clinical", "instruct"):
        check_output_dir(Path(out_dir) / name, overwrite=True, label="demo model directory")
    sweep_yml = Path(out_dir) / "sweep.yml"
    check_output_file(sweep_yml, replaceable=_is_demo_sweep, label="sweep file")
    with output_container(out_dir):
        paths = (build_demo_models if no_cache else copy_demo_models)(out_dir, seed=seed, quiet=quiet)
    write_text_atomic(sweep_yml, yaml.safe_dump({
        "clinical": str(paths["clinical"].resolve()),
        "instruct": str(paths["instruct"].resolve()),
        "base": str(paths["base"].resolve()),
        "methods": ["linear", "slerp"],
        "ratios": [round(i / 10, 1) for i in range(11)],
    }, sort_keys=False))
    for name, p in paths.items():
        click.echo(f"{name:9s} {p}")
    click.echo(f"sweep     {sweep_yml}")


# --- schedule (scheduled retraining) -------------------------------------------------------------

@cli.command("schedule")
@click.option("--cron", "cron_expr", required=True, metavar="'M H DOM MON DOW'",
              help="Standard 5-field cron expression, e.g. '0 3 * * 1' (Mondays 03:00).")
@click.option("--search-config", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("zenml_config/merge_search_demo.yaml"), show_default=True)
@click.option("--finetune-config", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("zenml_config/finetune_demo.yaml"), show_default=True)
@click.option("--promote-knee", is_flag=True, help="The scheduled retrain promotes the new knee (crontab/systemd).")
@click.option("--crontab-out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(".medmerge/ops/retrain.crontab"), show_default=True,
              help="Where the crontab line goes when the orchestrator cannot schedule (never installed).")
@click.option("--systemd-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write medmerge-retrain.service and .timer into this directory (never installed).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(".medmerge/ops/retrain.log"), show_default=True, help="The scheduled run's output.")
def schedule(cron_expr, search_config, finetune_config, promote_knee, crontab_out, systemd_out, log_path):
    """Run retraining on a schedule: a ZenML Schedule on orchestrators that support one, else a crontab line.

    Run from the repository root. On a schedulable orchestrator (Kubernetes, Kubeflow, Airflow, Vertex,
    SageMaker ...) merge_search and finetune get a ZenML schedule each; their hashing steps always run and
    every later step is cached on content, so a scheduled run with nothing changed is all cached and
    registers nothing. Otherwise (the local orchestrator) it says so and writes the crontab line (and with
    --systemd-out a systemd timer) running `python -m pipelines.retrain`; it installs neither.
    The work is done by `python -m pipelines.schedule`, started here as a separate process."""
    import subprocess

    from medmerge.ops.schedule import systemd_on_calendar, validate_cron

    cron = validate_cron(cron_expr)                     # CronError: exit 2, nothing written
    if systemd_out is not None:
        systemd_on_calendar(cron)                       # refuse an untranslatable expression up front
    repo = Path.cwd().resolve()
    if not (repo / "pipelines" / "schedule.py").is_file():
        raise MedmergeError(f"run medmerge schedule from the medmerge repository root ({repo} has no "
                            f"pipelines/schedule.py)")
    _check_schedule_outputs(crontab_out, systemd_out, [search_config, finetune_config])
    # The pipeline layer (ZenML) runs in its own process, as a user would start it: the core imports none of it.
    argv = [sys.executable, "-m", "pipelines.schedule", "--cron", cron, "--search-config", str(search_config),
            "--finetune-config", str(finetune_config), "--crontab-out", str(crontab_out), "--log", str(log_path)]
    if promote_knee:
        argv.append("--promote-knee")
    if systemd_out is not None:
        argv += ["--systemd-out", str(systemd_out)]
    env = dict(os.environ)
    if (click.get_current_context().obj or {}).get("debug"):   # --debug reaches the pipeline process too
        env["MEDMERGE_DEBUG"] = "1"
    proc = subprocess.run(argv, cwd=repo, capture_output=True, text=True, env=env)
    click.echo(proc.stdout, nl=False)
    click.echo(proc.stderr, nl=False, err=True)
    if proc.returncode:
        raise click.exceptions.Exit(proc.returncode)


def _check_schedule_outputs(crontab_out: Path, systemd_out: Path | None, inputs: list[Path]) -> None:
    """The crontab file and the systemd units may replace only what `medmerge schedule` wrote before."""
    from medmerge.io.atomic import check_output_dir, check_output_file, text_file_starting

    def is_crontab(p: Path) -> bool:
        return "pipelines.retrain" in p.read_text(encoding="utf-8")[:65536]

    check_output_file(crontab_out, protect=inputs, protect_what="run configuration", replaceable=is_crontab,
                      label="crontab file")
    if systemd_out is not None:
        check_output_dir(systemd_out, protect=inputs, protect_what="run configuration", container=True,
                         label="systemd directory")
        from medmerge.ops.schedule import UNIT_NAME

        for suffix in ("service", "timer"):
            check_output_file(systemd_out / f"{UNIT_NAME}.{suffix}", label="systemd unit",
                              replaceable=text_file_starting("[Unit]\nDescription=medmerge scheduled retraining"))


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return "; ".join(lines) if lines else ""


def main(argv=None) -> int:
    """Run the command line; return the exit status. Every error is one line on stderr: exit 2 for bad
    input (a MedmergeError, a usage error, an OSError naming a path), 1 for an internal error (a bug:
    run again with --debug or MEDMERGE_DEBUG=1 for the traceback), 130 when interrupted."""
    import traceback

    from medmerge.io.alloc import keep_freed_memory
    from medmerge.io.atomic import describe_os_error

    keep_freed_memory()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MEDMERGE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on") or \
        _debug_requested(args)
    if "--debug" in args:   # accepted before or after the command name
        cut = args.index("--") if "--" in args else len(args)
        args = [a for a in args[:cut] if a != "--debug"] + args[cut:]

    def fail(line: str, code: int) -> int:
        if debug:
            traceback.print_exc()
        click.echo(line, err=True)
        return code

    with _sigterm_as_interrupt():
        try:
            rv = cli.main(args=args, prog_name="medmerge", standalone_mode=False, obj={"debug": debug})
            if isinstance(rv, int):  # click hands back Exit codes instead of exiting when not standalone
                return rv
        except MedmergeError as exc:
            message = str(exc)   # may hold several lines on purpose (a data report's failures)
            return fail(f"medmerge: error: {message}", 2)
        except (click.exceptions.Abort, KeyboardInterrupt):
            return fail("medmerge: error: interrupted; nothing was left half-written", 130)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            return exc.exit_code
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            return fail(f"medmerge: error: {_one_line(exc.format_message())}{hint}", exc.exit_code)
        except click.ClickException as exc:
            return fail(f"medmerge: error: {_one_line(exc.format_message())}", exc.exit_code)
        except click.exceptions.Exit as exc:
            return exc.exit_code
        except OSError as exc:   # a path the user gave: missing, read-only, full, name too long, ...
            return fail(f"medmerge: error: {describe_os_error(exc)}", 2)
        except MemoryError:
            return fail("medmerge: error: out of memory", 2)
        except Exception as exc:  # noqa: BLE001 - the one place every other error becomes one line
            first = _one_line(str(exc).splitlines()[0] if str(exc) else "")
            return fail(f"medmerge: error: {type(exc).__name__}: {first} (an internal error; run with --debug "
                        f"for the traceback)", 1)
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so cleanups (temporary and half-made outputs) run."""


def _sigterm_as_interrupt():
    import signal
    import threading
    from contextlib import contextmanager, nullcontext

    if threading.current_thread() is not threading.main_thread():
        return nullcontext()

    @contextmanager
    def handler():
        def raise_terminated(signum, frame):
            raise _Terminated()

        try:
            before = signal.signal(signal.SIGTERM, raise_terminated)
        except (ValueError, OSError):
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, before)

    return handler()


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
