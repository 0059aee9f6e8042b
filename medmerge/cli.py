"""The ``medmerge`` command line. Bad input exits 2 with one line naming the problem."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medmerge.errors import MedmergeError

_common = [
    click.option("--allow-pickle", is_flag=True, help="Read pickle .bin weights (can execute code: trusted files only)."),
    click.option("--trust-remote-code", is_flag=True, help="Let transformers run code shipped with a model."),
    click.option("--overwrite", is_flag=True, help="Replace an existing output directory."),
    click.option("--max-shard-size", default="5GB", show_default=True, help="Largest safetensors shard."),
    click.option("--chunk-size", default="8MiB", show_default=True,
                 help="Row-separable methods stream tensors larger than this in row blocks."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
]


def _prefetch_hashes(config: Path, keys) -> None:
    """Start hashing local parents' weight files before the heavy imports (they use one core).
    Best effort: a config that does not parse here is reported properly by the real loader."""
    import yaml

    from medmerge.io.hashing import prefetch

    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
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
def cli():
    """medmerge: adapt open LLMs to clinical work by merging weights instead of retraining."""


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--random-seed", type=int, default=None, help="Seed for dare_*/della* (overrides the recipe's).")
@common_options
def merge(config, out_dir, random_seed, allow_pickle, trust_remote_code, overwrite, max_shard_size, chunk_size,
          quiet):
    """Merge the models of a mergekit YAML CONFIG into a checkpoint at OUT_DIR."""
    from medmerge.engine import merge as run_merge
    from medmerge.io.writer import parse_size
    from medmerge.recipe import load_recipe

    recipe = load_recipe(config)
    if random_seed is not None:
        recipe = recipe.model_copy(update={"random_seed": random_seed})
    out = run_merge(recipe, out_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                    overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size),
                    chunk_bytes=parse_size(chunk_size), quiet=quiet)
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("sweep_config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@common_options
def sweep(sweep_config, out_dir, allow_pickle, trust_remote_code, overwrite, max_shard_size, chunk_size, quiet):
    """Write every candidate of a ratio sweep to OUT_DIR/<method>-<ratio>/, reading parents once."""
    _prefetch_hashes(sweep_config, ("clinical", "instruct", "base"))
    from medmerge.engine import sweep as run_sweep
    from medmerge.io.writer import parse_size
    from medmerge.recipe import load_sweep

    spec = load_sweep(sweep_config)
    outs = run_sweep(spec, out_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                     overwrite=overwrite, max_shard_bytes=parse_size(max_shard_size),
                     chunk_bytes=parse_size(chunk_size), quiet=quiet)
    click.echo(f"wrote {len(outs)} candidates to {out_dir}:")
    for name in outs:
        click.echo(f"  {name}")


@cli.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--scan-values", is_flag=True, help="Also read every tensor and refuse NaN/Inf.")
@click.option("--allow-pickle", is_flag=True)
def check(models, scan_values, allow_pickle):
    """Check that MODELS can be merged with each other."""
    from medmerge.compat import check_compatible
    from medmerge.engine import open_parents

    parents = open_parents(list(models), allow_pickle=allow_pickle, check=False)
    check_compatible(list(parents.values()), scan_values=scan_values)
    click.echo(f"compatible: {', '.join(models)}")


@cli.command()
def methods():
    """List merge methods with their declared parameters."""
    from medmerge.methods import METHODS

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
                     help="Comma-separated suites: clinical, ifeval, medical5."),
        click.option("--data-dir", default=None, envvar="MEDMERGE_DATA_DIR",
                     help="Local data directory ('sample' = the sample shipped for the demo); default: the Hub."),
        click.option("--limit", type=int, default=None, help="First N documents of each task."),
        click.option("--num-fewshot", type=int, default=None, help="Override every suite's shots."),
        click.option("--batch-size", default="8", show_default=True, help="An integer or 'auto'."),
        click.option("--backend", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
                     help="vllm serves the generation tasks (needs a GPU and vllm)."),
        click.option("--device", default="cpu", show_default=True),
        click.option("--max-gen-toks", type=int, default=None, help="Default: min(1280, context/2)."),
        click.option("--no-cache", is_flag=True, help="Ignore and do not fill the evaluation cache."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _eval_settings(suites, data_dir, limit, num_fewshot, batch_size, backend, device, max_gen_toks):
    from medmerge.evaluation.runner import EvalSettings
    from medmerge.evaluation.tasks import resolve_data_dir

    data_dir = resolve_data_dir(data_dir)
    return EvalSettings(
        suites=tuple(s.strip() for s in suites.split(",") if s.strip()), data_dir=data_dir, limit=limit,
        num_fewshot=num_fewshot, batch_size=batch_size if batch_size == "auto" else int(batch_size),
        backend=backend, device=device, max_gen_toks=max_gen_toks,
    )


@cli.command()
@click.argument("model_dir")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Report JSON.")
@click.option("--trust-remote-code", is_flag=True)
@_eval_options
def evaluate(model_dir, out, trust_remote_code, suites, data_dir, limit, num_fewshot, batch_size, backend, device,
             max_gen_toks, no_cache):
    """Score a checkpoint on benchmark suites; print a table and write a JSON report."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.runner import evaluate_checkpoint

    settings = _eval_settings(suites, data_dir, limit, num_fewshot, batch_size, backend, device, max_gen_toks)
    report = evaluate_checkpoint(model_dir, settings, cache=None if no_cache else EvalCache(),
                                 trust_remote_code=trust_remote_code)
    click.echo(report.table())
    report.write(out)
    click.echo(f"wrote {out} ({report.seconds:.1f} s)")


@cli.command("evaluate-sweep")
@click.argument("sweep_config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for one report JSON per candidate.")
@_eval_options
def evaluate_sweep_cmd(sweep_config, out, suites, data_dir, limit, num_fewshot, batch_size, backend, device,
                       max_gen_toks, no_cache):
    """Evaluate every candidate of a sweep in memory (nothing written but the reports)."""
    from medmerge.evaluation.cache import EvalCache
    from medmerge.evaluation.sweep_eval import evaluate_sweep
    from medmerge.recipe import load_sweep

    spec = load_sweep(sweep_config)
    settings = _eval_settings(suites, data_dir, limit, num_fewshot, batch_size, backend, device, max_gen_toks)
    cache = None if no_cache else EvalCache()
    rows = []
    for cand, report in evaluate_sweep(spec, settings, cache):
        report.write(Path(out) / f"{cand.name}.json")
        rows.append((cand.name, report.medical_avg, report.if_score, len(report.cached_tasks)))
    click.echo(f"{'candidate':14s} {'Medical Avg':>11s} {'IF score':>9s}  cached tasks")
    for name, med, ifs, cached in rows:
        fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
        click.echo(f"{name:14s} {fmt(med):>11s} {fmt(ifs):>9s}  {cached}")
    if cache is not None:
        click.echo(f"cache: {cache.hits} hits, {cache.misses} misses")


@cli.group()
def server():
    """Start, stop or inspect the local MLflow tracking server."""


_state_opt = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                          default=Path(".medmerge") / "mlflow", show_default=True,
                          help="Where the server keeps its PID, log, sqlite store and artifacts.")


@server.command("start")
@_state_opt
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True, help="0 picks a free port.")
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
    import os

    from medmerge.tracking.server import status

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
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
@_state_opt
def promote(name, version, stage, tracking_uri, state_dir):
    """Promote registered model NAME's VERSION: alias @STAGE and the stage in the MLflow UI."""
    from medmerge.tracking.registry import check_reachable, promote as do_promote

    uri = _tracking_uri(tracking_uri, state_dir)
    check_reachable(uri)
    reason = do_promote(name, version, uri, stage=stage)
    click.echo(f"promoted to {stage}: {reason}")
    click.echo(f"models:/{name}@{stage} -> version {version}")


@cli.command("demo-models")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
def demo_models(out_dir, seed, quiet):
    """Build the tiny base/clinical/instruct demo checkpoints (offline) and a sweep.yml for them."""
    import yaml

    from medmerge.demo import build_demo_models

    paths = build_demo_models(out_dir, seed=seed, quiet=quiet)
    sweep_yml = Path(out_dir) / "sweep.yml"
    sweep_yml.write_text(yaml.safe_dump({
        "clinical": str(paths["clinical"].resolve()),
        "instruct": str(paths["instruct"].resolve()),
        "base": str(paths["base"].resolve()),
        "methods": ["linear", "slerp"],
        "ratios": [round(i / 10, 1) for i in range(11)],
    }, sort_keys=False))
    for name, p in paths.items():
        click.echo(f"{name:9s} {p}")
    click.echo(f"sweep     {sweep_yml}")


def main(argv=None) -> int:
    from medmerge.io.alloc import keep_freed_memory

    keep_freed_memory()
    try:
        rv = cli.main(args=argv, prog_name="medmerge", standalone_mode=False)
        if isinstance(rv, int):  # click hands back Exit codes instead of exiting when not standalone
            return rv
    except MedmergeError as exc:
        click.echo(f"medmerge: error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
