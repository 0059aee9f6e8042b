"""The streaming merge engine: plan per tensor, read each parent tensor once, write as we go.

A :class:`MergePlan` lists one :class:`Step` per output tensor: its name, dtype and shape
(known before any data is read, so the safetensors header is written first) and a
``compute(load)`` function. Methods mergekit implements are planned by mergekit's own
``MergePlanner`` (parameter filters and gradients, dtype casts, optional tensors) and each
step runs mergekit's ``ExecuteMergeMethodTask`` on the tensors we stream in, so the math is
mergekit's; a native method (``hierarchical_ot``) is planned by its registry entry's ``plan_steps``.

Executing several plans over the same parents (a sweep) reads every parent tensor once and
feeds it to every plan before moving on. Row-separable methods (linear, task_arithmetic)
process tensors larger than ``chunk_bytes`` in row blocks read with safetensors slices, so
peak memory follows the chunk, not the largest tensor. Stochastic methods reseed torch's
RNG per tensor from (seed, tensor name), so results do not depend on processing order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medmerge import __version__
from medmerge.errors import CompatibilityError, NonFiniteOutputError, RecipeError
from medmerge.io import provenance as identity
from medmerge.io.atomic import atomic_dirs, check_output_dir
from medmerge.io.checkpoint import Checkpoint
from medmerge.io.writer import DEFAULT_MAX_SHARD_BYTES, BackgroundWriter, StreamingCheckpointWriter, TensorSpec
from medmerge.merge.compat import assert_finite, check_compatible, non_finite_kind
from medmerge.merge.plan import Loader, Step
from medmerge.merge.recipe import Recipe, SweepCandidate, SweepSpec

# Row blocks of 8 MiB keep each float32 temporary (16 MiB) under glibc's mmap ceiling, so
# freed blocks are reused instead of faulted in again (measured: 12.6 s -> 9.9 s, RSS 1.19 -> 0.61 GB).
DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
# Files that define a vocabulary: a parent with none of them has no tokenizer to give a merge.
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model")

HALF = (torch.bfloat16, torch.float16)


@dataclass
class MergePlan:
    recipe: Recipe                                 # as the user wrote it (hub ids, relative paths)
    steps: list[Step]
    donor: Checkpoint                              # config source
    tokenizer_source: Checkpoint                   # tokenizer files source
    parents: dict[str, Checkpoint] = field(default_factory=dict)


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


# ------------------------------------------------------------------------------------------------
# parents
# ------------------------------------------------------------------------------------------------
def open_parents(refs: Sequence[str], *, allow_pickle: bool = False, check: bool = True) -> dict[str, Checkpoint]:
    """Open every parent (refusing adapters and unallowed pickle) and check they are compatible."""
    parents: dict[str, Checkpoint] = {}
    for ref in refs:
        if ref not in parents:
            parents[ref] = Checkpoint(ref, allow_pickle=allow_pickle)
    if check:
        check_compatible(list(parents.values()))
    return parents


# ------------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------------
def _mergekit_steps(recipe: Recipe, parents: dict[str, Checkpoint], trust_remote_code: bool) -> list[Step]:
    """Plan with mergekit's planner (:mod:`medmerge.merge.mergekit_planner`); each step runs mergekit's per-tensor task."""
    from medmerge.merge import mergekit_planner

    local = recipe.with_resolved_paths(lambda r: str(parents[r].path))
    by_path = {str(parents[r].path): r for r in parents}
    tasks = mergekit_planner.plan(local.to_mergekit_dict(), trust_remote_code=trust_remote_code)
    stochastic_seed = recipe.random_seed if recipe.method.stochastic else None

    steps = []
    for task in tasks:
        inputs = []  # (ModelReference, parent ref, tensor name, cast dtype)
        for tin in task.inputs:
            ckpt_ref = by_path[tin.path]
            found = next((n for n in tin.names if n in parents[ckpt_ref]), None)
            if found is None:
                if tin.optional:
                    continue
                raise CompatibilityError(f"tensor {tin.names[0]} is missing from {ckpt_ref}")
            inputs.append((tin.model, ckpt_ref, found, tin.cast))
        if not inputs:
            continue
        in_dtypes = []
        shape: tuple[int, ...] = ()
        for _, ckpt_ref, name, cast in inputs:
            dt, shp = parents[ckpt_ref].info(name)
            in_dtypes.append(cast or dt)
            shape = shape or tuple(shp)
        out_dtype = task.out_dtype
        if out_dtype is None:
            out_dtype = in_dtypes[0]
            for dt in in_dtypes[1:]:
                out_dtype = torch.promote_types(out_dtype, dt)

        upcast = recipe.method.float32_math

        def compute(load: Loader, execute=task.execute, inputs=inputs, out_dtype=out_dtype,
                    upcast=upcast) -> torch.Tensor:
            tensors = {model_ref: load(ckpt_ref, name, cast, upcast) for model_ref, ckpt_ref, name, cast in inputs}
            result = execute(tensors)
            return result.to(out_dtype) if result.dtype != out_dtype else result

        steps.append(Step(
            name=task.name,
            spec=TensorSpec(task.name, out_dtype, tuple(shape)),
            reads=tuple((r, n) for _, r, n, _ in inputs),
            compute=compute,
            row_separable=recipe.method.row_separable,
            seed=_tensor_seed(stochastic_seed, task.name) if stochastic_seed is not None else None,
        ))
    return steps


def has_tokenizer(ckpt: Checkpoint) -> bool:
    return any((ckpt.path / f).is_file() for f in VOCAB_FILES)


def tokenizer_source(recipe: Recipe, parents: dict[str, Checkpoint]) -> str:
    """The parent whose tokenizer files the merge gets: ``tokenizer_source`` when the recipe names one
    (it must have them), else the donor of the config, else (as mergekit does) the first parent that
    has a tokenizer. A merge none of whose parents has one is refused: a checkpoint without a tokenizer
    cannot be used or evaluated."""
    tok = recipe.tokenizer_source
    if tok is not None:
        ref = recipe.base_model if tok == "base" else tok
        if ref is None or not has_tokenizer(parents[ref]):
            raise CompatibilityError(f"tokenizer_source {tok!r} ({ref}) has no tokenizer files "
                                     f"({', '.join(VOCAB_FILES[:3])})")
        return ref
    for ref in [recipe.donor, *recipe.parent_refs]:
        if has_tokenizer(parents[ref]):
            return ref
    raise CompatibilityError(f"no parent has tokenizer files ({', '.join(VOCAB_FILES[:3])}): the merged checkpoint "
                             f"would have no tokenizer; add the tokenizer to {recipe.donor}")


def plan_merge(recipe: Recipe, parents: dict[str, Checkpoint], *, trust_remote_code: bool = False) -> MergePlan:
    """Plan ``recipe`` over already opened and checked ``parents`` (keyed by the recipe's refs)."""
    missing = [r for r in recipe.parent_refs if r not in parents]
    if missing:
        raise RecipeError(f"parent {missing[0]} was not opened")
    if recipe.method.plan_steps is not None:  # a native method plans itself (its registry entry says how)
        steps = recipe.method.plan_steps(recipe, parents)
    else:
        steps = _mergekit_steps(recipe, parents, trust_remote_code)
    tok_ref = tokenizer_source(recipe, parents)
    return MergePlan(recipe=recipe, steps=steps, donor=parents[recipe.donor], tokenizer_source=parents[tok_ref],
                     parents={r: parents[r] for r in recipe.parent_refs})


# ------------------------------------------------------------------------------------------------
# execution
# ------------------------------------------------------------------------------------------------
class _TensorReader:
    """Reads parent tensors, checks them for NaN/Inf, and memoises them (and their casts) for
    the current output tensor, so K candidates share one read and one conversion."""

    def __init__(self, parents: dict[str, Checkpoint]):
        self.parents = parents
        self.memo: dict[tuple, torch.Tensor] = {}
        self.rows: tuple[int, int] | None = None

    def reset(self, rows: tuple[int, int] | None = None) -> None:
        self.memo.clear()
        self.rows = rows

    def raw(self, ref: str, name: str) -> torch.Tensor:
        ckpt = self.parents[ref]
        t = ckpt.get(name) if self.rows is None else ckpt.get_rows(name, *self.rows)
        assert_finite(t, name, ref)
        return t

    def __call__(self, ref: str, name: str, cast: torch.dtype | None = None, upcast: bool = False) -> torch.Tensor:
        key = (ref, name, cast, upcast)
        t = self.memo.get(key)
        if t is None:
            if upcast:
                t = self(ref, name, cast)
                t = t.float() if t.dtype in HALF else t
            elif cast is not None:
                t = self(ref, name)
                t = t.to(cast) if t.dtype != cast else t
            else:
                t = self.raw(ref, name)
            self.memo[key] = t
        return t


def _row_blocks(spec: TensorSpec, chunk_bytes: int) -> list[tuple[int, int]] | None:
    if len(spec.shape) < 1 or spec.shape[0] < 2 or spec.nbytes <= chunk_bytes:
        return None
    rows = spec.shape[0]
    per_block = max(1, chunk_bytes * rows // max(spec.nbytes, 1))
    return [(s, min(rows, s + per_block)) for s in range(0, rows, per_block)]


def _run_step(step: Step, load: Loader) -> torch.Tensor:
    if step.seed is not None:
        torch.manual_seed(step.seed)
    return step.compute(load)


def _same_layout(plans: Sequence[MergePlan]) -> bool:
    names = [s.name for s in plans[0].steps]
    return all([s.name for s in p.steps] == names for p in plans[1:])


def align_plans(plans: Sequence[MergePlan]) -> list[MergePlan]:
    """Plans whose outputs are the same tensors in another order (a native method plans in checkpoint order,
    mergekit in architecture order) reordered to the first plan's order, so a sweep over several methods
    still streams every parent tensor once; plans with other tensors are left as they are."""
    order = {s.name: i for i, s in enumerate(plans[0].steps)} if plans else {}
    out = []
    for p in plans:
        if [s.name for s in p.steps] != list(order) and {s.name for s in p.steps} == set(order):
            p = dataclasses.replace(p, steps=sorted(p.steps, key=lambda s: order[s.name]))
        out.append(p)
    return out


def _progress(total: int, desc: str, quiet: bool):
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=quiet,
                file=sys.stderr, dynamic_ncols=True)


def _step_bytes(step: Step, parents: dict[str, Checkpoint]) -> int:
    total = 0
    for ref, name in step.reads:
        dt, shape = parents[ref].info(name)
        n = 1
        for s in shape:
            n *= s
        total += n * torch.empty((), dtype=dt).element_size()
    return total


def stream_plans(plans: Sequence[MergePlan], emit: Callable[[int, Step, torch.Tensor], None], *,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, quiet: bool = False, desc: str = "merge") -> None:
    """Run every plan tensor by tensor, reading each parent tensor once for all plans.

    ``emit(plan_index, step, tensor)`` receives outputs in plan order; row-chunked tensors
    arrive as consecutive row blocks.
    """
    if not _same_layout(plans):
        for i, plan in enumerate(plans):
            def emit_one(_: int, s: Step, t: torch.Tensor, i: int = i) -> None:
                emit(i, s, t)

            stream_plans([plan], emit_one, chunk_bytes=chunk_bytes, quiet=quiet, desc=desc)
        return
    parents = _plans_parents(plans)
    reader = _TensorReader(parents)
    first = plans[0].steps
    union_bytes = [_step_bytes(s, parents) for s in first]
    with _progress(sum(union_bytes), f"{desc} ({len(first)} tensors)", quiet) as bar:
        for idx, step0 in enumerate(first):
            steps = [p.steps[idx] for p in plans]
            blocks = _row_blocks(step0.spec, chunk_bytes) if all(s.row_separable for s in steps) else None
            parts: list[tuple[int, int] | None] = list(blocks) if blocks else [None]   # None: the whole tensor
            for rows in parts:
                reader.reset(rows)
                for pi, step in enumerate(steps):
                    emit(pi, step, _run_step(step, reader))
            reader.reset()
            bar.update(union_bytes[idx])
            bar.set_postfix_str(f"{idx + 1}/{len(first)} tensors", refresh=False)


def _plans_parents(plans: Sequence[MergePlan]) -> dict[str, Checkpoint]:
    parents: dict[str, Checkpoint] = {}
    for p in plans:
        parents.update(p.parents)
    return parents


def _write_metadata(plan: MergePlan, out: Path, provenance: dict[str, dict], name: str) -> None:
    """config.json, tokenizer files, the recipe, provenance and the model card into ``out`` (a temporary
    directory until the write completes); ``name`` is the final directory's, the card's title."""
    from medmerge.merge.card import model_card

    cfg = dict(plan.donor.config)
    dtype = plan.recipe.out_dtype or plan.recipe.dtype
    if dtype:
        cfg.pop("torch_dtype", None)
        cfg["dtype"] = dtype
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for fname in TOKENIZER_FILES:
        src = plan.tokenizer_source.path / fname
        if src.exists():
            shutil.copyfile(src, out / fname)
    mine = {r: provenance[r] for r in plan.parents}
    (out / "mergekit_config.yml").write_text(plan.recipe.to_yaml())
    (out / "medmerge.json").write_text(json.dumps({
        "medmerge_version": __version__,
        "recipe": plan.recipe.model_dump(mode="json"),
        "parents": mine,
        "parents_fingerprint": identity.fingerprint(identity.weights(mine)),
    }, indent=2) + "\n")
    (out / "README.md").write_text(model_card(plan.recipe, mine, name))


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def compute_threads(busy: int):
    """Leave ``busy`` cores to other threads of ours (the writers) while torch computes.

    torch's CPU kernels use one OpenMP thread per core and their idle threads spin; with
    writer threads copying outputs into the page cache on the same cores, both slow down.
    Measured on a 2-core 0.5B sweep of 11 candidates: torch at 2 threads spent 50 s of user
    time streaming in 43 s, at 1 thread 25-28 s of user time in 33-37 s. torch's setting is
    restored afterwards. Use it only around elementwise math: a reduction (a norm, a dot
    product) splits its sum across threads, so its rounding depends on the thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, _available_cores() - busy)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_output_finite(t: torch.Tensor, step: Step, plan: MergePlan, what: str, source: str | None,
                        written: bool = True) -> None:
    """Refuse an output tensor holding NaN or Inf (every parent value was checked finite as it was read, so
    the recipe made them: e.g. weights that sum to zero with ``normalize``). One reduction per tensor.
    ``what`` names the output (its directory's name)."""
    kind = non_finite_kind(t)
    if kind is None:
        return
    where = f"{source}: " if source else ""
    raise NonFiniteOutputError(
        f"{where}the {plan.recipe.merge_method} merge for {what} gives {kind} values in tensor {step.name} "
        f"though every parent value is finite; check the recipe's parameters (e.g. weights that sum to zero "
        f"with normalize){'; nothing was written' if written else ''}")


def write_plans(plans: Sequence[MergePlan], out_dirs: Sequence[Path], *, overwrite: bool = False,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                quiet: bool = False, desc: str = "merge", source: str | None = None) -> list[Path]:
    """Execute ``plans`` into ``out_dirs``; every directory appears whole at the end, or none does (nor any
    directory this call created). An output tensor with NaN or Inf stops it (:func:`check_output_finite`);
    ``source`` (the recipe's file) names the recipe in that error."""
    out_dirs = [Path(d) for d in out_dirs]
    plans = align_plans(plans)
    with ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="medmerge-hash"))
        provenance_future = pool.submit(identity.parent_provenance, _plans_parents(plans))  # hashes parents while we merge
        inputs = [c.path for c in _plans_parents(plans).values()]
        tmps = stack.enter_context(atomic_dirs(out_dirs, overwrite=overwrite, protect=inputs))
        writers = [StreamingCheckpointWriter(t, [s.spec for s in p.steps], max_shard_bytes=max_shard_bytes)
                   for p, t in zip(plans, tmps)]
        background = BackgroundWriter(writers)
        try:
            try:
                # only elementwise math may change thread count: a reduction's rounding depends on it
                elementwise = all(s.row_separable for p in plans for s in p.steps)
                with compute_threads(background.threads) if elementwise else nullcontext():
                    def emit(i: int, step: Step, t: torch.Tensor) -> None:
                        check_output_finite(t, step, plans[i], out_dirs[i].name, source)
                        background.put(i, step.name, t)

                    stream_plans(plans, emit, chunk_bytes=chunk_bytes, quiet=quiet, desc=desc)
            finally:
                background.finish()
            for w in writers:
                w.close()
        finally:
            for w in writers:
                w.abort()
        provenance = provenance_future.result()
        for plan, tmp, final in zip(plans, tmps, out_dirs):
            _write_metadata(plan, tmp, provenance, final.name)
    return out_dirs


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def merge(recipe: Recipe, out_dir: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
          overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
          chunk_bytes: int = DEFAULT_CHUNK_BYTES, quiet: bool = False, source: str | None = None) -> Path:
    """Check the output path and compatibility, then merge ``recipe`` into a Hugging Face checkpoint at
    ``out_dir`` (see :func:`medmerge.io.atomic.check_output_dir` for what ``overwrite`` may replace)."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite=overwrite, protect=recipe.parent_refs)
    parents = open_parents(recipe.parent_refs, allow_pickle=allow_pickle)
    plan = plan_merge(recipe, parents, trust_remote_code=trust_remote_code)
    (out,) = write_plans([plan], [out_dir], overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                         chunk_bytes=chunk_bytes, quiet=quiet, desc=f"{recipe.merge_method}", source=source)
    return out


def sweep(spec: SweepSpec, out_dir: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
          overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
          chunk_bytes: int = DEFAULT_CHUNK_BYTES, quiet: bool = False,
          source: str | None = None) -> dict[str, Path]:
    """Write every candidate of ``spec`` to ``out_dir/<method>-<ratio>/`` reading each parent tensor once.
    ``out_dir`` may exist (it is never replaced); each candidate directory follows the rules of
    :func:`medmerge.io.atomic.check_output_dir`. A failure leaves no candidate and no directory it created."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, protect=spec.parent_refs, container=True)
    candidates = spec.candidates()
    targets = [out_dir / c.name for c in candidates]
    for t in targets:
        check_output_dir(t, overwrite=overwrite, protect=spec.parent_refs, label="candidate directory")
    parents = open_parents(spec.parent_refs, allow_pickle=allow_pickle)
    plans = [plan_merge(c.recipe, parents, trust_remote_code=trust_remote_code) for c in candidates]
    write_plans(plans, targets, overwrite=overwrite, max_shard_bytes=max_shard_bytes, chunk_bytes=chunk_bytes,
                quiet=quiet, desc=f"sweep of {len(candidates)} candidates", source=source)
    return {c.name: t for c, t in zip(candidates, targets)}


def merged_state_dict(plan: MergePlan, load: _TensorReader | None = None, name: str = "candidate"
                      ) -> dict[str, torch.Tensor]:
    """Compute one plan's tensors in memory; a NaN or Inf in any of them is an error (as when writing)."""
    load = load or _TensorReader(plan.parents)
    out = {}
    for step in plan.steps:
        load.reset()
        out[step.name] = t = _run_step(step, load)
        check_output_finite(t, step, plan, name, None, written=False)
    load.reset()
    return out


class PreloadedParents(_TensorReader):
    """Parents held in memory once, for sweeps evaluated without writing candidates."""

    def __init__(self, parents: dict[str, Checkpoint], plans: Sequence[MergePlan]):
        super().__init__(parents)
        wanted = {rn for p in plans for s in p.steps for rn in s.reads}
        self.tensors = {(ref, name): super(PreloadedParents, self).raw(ref, name) for ref, name in wanted}

    def raw(self, ref: str, name: str) -> torch.Tensor:
        return self.tensors[ref, name]


def iter_sweep(spec: SweepSpec, *, allow_pickle: bool = False, trust_remote_code: bool = False,
               preload: bool = True) -> Iterator[tuple[SweepCandidate, dict[str, torch.Tensor]]]:
    """Yield ``(candidate, state_dict)`` one candidate at a time, writing nothing.

    With ``preload`` the parents are read into memory once (memory: both parents plus one
    candidate); without it each candidate re-reads the parents tensor by tensor.
    """
    refs = [spec.clinical, spec.instruct] + ([spec.base] if spec.base else [])
    parents = open_parents(refs, allow_pickle=allow_pickle)
    candidates = spec.candidates()
    plans = [plan_merge(c.recipe, parents, trust_remote_code=trust_remote_code) for c in candidates]
    load = PreloadedParents(parents, plans) if preload else None
    for cand, plan in zip(candidates, plans):
        yield cand, merged_state_dict(plan, load, cand.name)
