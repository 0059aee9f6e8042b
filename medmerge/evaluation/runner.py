"""Evaluate a model (object or checkpoint directory) on suites of lm-eval tasks.

Models are handed to lm-eval as objects (``HFLM(pretrained=<model>)``), so a checkpoint on
disk and a candidate merged in memory go through the same code and give the same numbers.
Tasks already in the evaluation cache are not run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medmerge import __version__
from medmerge.errors import as_value_error
from medmerge.evaluation.cache import EvalCache, cache_key
from medmerge.evaluation.report import EvalReport, MetricValue, TaskResult
from medmerge.evaluation.tasks import EvalError, TaskSpec, load_suites, suite_tasks, task_spec
from medmerge.merge.precision import DType, normalise, resolve_dtype, torch_dtype

DEFAULT_MAX_GEN_TOKS = 1280  # IFEval's own setting; capped at half the model's context


@dataclass(frozen=True)
class EvalSettings:
    suites: tuple[str, ...] = ("clinical", "ifeval")
    data_dir: str | None = None          # None: public Hub datasets; else a local data directory
    limit: int | None = None             # first N documents of each task
    num_fewshot: int | None = None       # None: each suite's own default
    batch_size: int | str = 8            # or "auto"
    backend: str = "hf"                  # "hf", or "vllm" for generation tasks (GPU + vllm needed)
    device: str = "cpu"
    dtype: str = "auto"                  # auto: the checkpoint's dtype on CUDA, float32 on a CPU (precision.py)
    max_gen_toks: int | None = None      # None: min(1280, context // 2)
    bootstrap_iters: int = 1000          # stderr of non-mean aggregations (IFEval's inst-level acc)
    seed: int = 1234
    # Prompt format, passed to lm-eval as its own options (apply_chat_template, fewshot_as_multiturn,
    # system_instruction). chat_template: "none" (plain prompts, the default), "auto" (the tokenizer's
    # template when it has one) or "true" (required: an error when the tokenizer has none).
    chat_template: str = "none"
    fewshot_as_multiturn: bool | None = None  # None: lm-eval's default, True when a chat template is applied
    system_instruction: str | None = None
    log_samples: bool = False            # keep lm-eval's per-sample records (prompts, responses, scores)

    def __post_init__(self):
        check_prompt_format(self.chat_template, self.fewshot_as_multiturn)

    def cache_part(self, num_fewshot: int, max_gen_toks: int, dtype: str = "float32",
                   prompt: dict[str, Any] | None = None) -> dict[str, Any]:
        from importlib.metadata import version

        part: dict[str, Any] = {"num_fewshot": num_fewshot, "limit": self.limit, "max_gen_toks": max_gen_toks,
                                "backend": self.backend, "seed": self.seed, "lm_eval": version("lm_eval")}
        if dtype != "float32":  # float32 keys stay as they were before the dtype setting existed
            part["dtype"] = dtype
        if prompt:  # plain prompts keep the keys they had before the prompt-format settings existed
            part["prompt"] = prompt
        return part


CHAT_TEMPLATE_CHOICES = ("none", "auto", "true")
# the run-config fields that say how prompts were formatted and what was kept: MLflow run parameters
PROMPT_FORMAT = ("chat_template", "fewshot_as_multiturn", "system_instruction", "log_samples")


def normalise_chat_template(value: Any) -> str:
    """``none | auto | true``; YAML's booleans and null are accepted (``true`` -> "true", ``false``/null -> "none")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "true"
    text = str(value).strip().lower()
    if text not in CHAT_TEMPLATE_CHOICES:
        raise EvalError(f"chat_template must be one of none, auto, true; got {value!r}")
    return text


def check_prompt_format(chat_template: str, fewshot_as_multiturn: bool | None) -> None:
    if chat_template not in CHAT_TEMPLATE_CHOICES:
        raise EvalError(f"chat_template must be one of none, auto, true; got {chat_template!r}")
    if fewshot_as_multiturn and chat_template == "none":
        # lm-eval refuses the same: the shots become chat turns only when a template renders them
        raise EvalError("fewshot_as_multiturn needs a chat template (chat_template: auto or true)")


class EvalOptions(BaseModel):
    """The evaluation fields a run configuration exposes (merge_search's config, the forgetting check)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    suites: tuple[str, ...] = ("clinical", "ifeval")
    data_dir: str | None = None          # None: the Hub; a directory; or "sample" (shipped in the package)
    limit: int | None = Field(None, ge=1)           # documents per task (None: all)
    num_fewshot: int | None = Field(None, ge=0)     # None: each task's own
    max_gen_toks: int | None = Field(None, ge=1)
    batch_size: int | str = 8            # a positive count, or lm-eval's "auto" / "auto:N"
    device: str | None = None            # None: cuda when there is a GPU, else cpu
    dtype: DType = "auto"                # auto: the checkpoint's dtype on CUDA, float32 on a CPU
    chat_template: Literal["none", "auto", "true"] = "none"   # see EvalSettings
    fewshot_as_multiturn: bool | None = None
    system_instruction: str | None = None
    log_samples: bool = False            # per-sample records (clinical text) to the runs' artifacts; off by default

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype(cls, v):
        return normalise(v)

    @field_validator("suites")
    @classmethod
    def _suites(cls, v):
        from medmerge.evaluation.tasks import load_suites

        known = load_suites()
        if not v:
            raise ValueError(f"no suite given; known suites: {', '.join(known)}")
        for s in v:
            if s not in known:
                raise ValueError(f"unknown suite {s!r}; known suites: {', '.join(known)}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError(f"batch_size must be at least 1, got {v}")
        if isinstance(v, str) and not re.fullmatch(r"[1-9][0-9]*|auto(:[1-9][0-9]*)?", v):
            raise ValueError(f"batch_size {v!r}: give a positive integer, 'auto' or 'auto:N'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if v is not None:
            try:
                torch.device(v)
            except (RuntimeError, ValueError):
                raise ValueError(f"unknown device {v!r}; use cpu, cuda, cuda:N or mps") from None
        return v

    @field_validator("chat_template", mode="before")
    @classmethod
    def _chat_template(cls, v):
        with as_value_error():
            return normalise_chat_template(v)

    @model_validator(mode="after")
    def _prompt_format(self):
        with as_value_error():
            check_prompt_format(self.chat_template, self.fewshot_as_multiturn)
        return self

    def eval_settings(self) -> EvalSettings:
        from medmerge.evaluation.tasks import resolve_data_dir

        return EvalSettings(suites=self.suites, data_dir=resolve_data_dir(self.data_dir), limit=self.limit,
                            num_fewshot=self.num_fewshot, batch_size=self.batch_size, max_gen_toks=self.max_gen_toks,
                            device=self.device or default_device(), dtype=self.dtype,
                            chat_template=self.chat_template, fewshot_as_multiturn=self.fewshot_as_multiturn,
                            system_instruction=self.system_instruction, log_samples=self.log_samples)


def resolve_chat_template(setting: str, lm) -> str | None:
    """The chat template text lm-eval will apply for ``setting`` (None: plain prompts), as lm-eval's
    own ``lm.chat_template(True)`` selects it from the tokenizer."""
    if setting == "none":
        return None
    tokenizer = getattr(lm, "tokenizer", None)
    has = tokenizer is not None and getattr(tokenizer, "chat_template", None)
    if not has:
        if setting == "auto":
            return None
        raise EvalError("chat_template: true, but the model's tokenizer has no chat template "
                        "(use chat_template: auto to fall back to plain prompts)")
    template = lm.chat_template(True)
    return template if isinstance(template, str) else json.dumps(template, sort_keys=True)


def sample_records(samples: list[dict]) -> list[dict]:
    """lm-eval's per-sample records in the form ``lm_eval --log_samples`` writes them (its own
    sanitising: request arguments as ``gen_args_i/arg_j``, responses as lists), as plain JSON values:
    ``doc``, ``target``, ``arguments`` (the prompt), ``resps`` and ``filtered_resps`` (the response),
    and each metric's value (the score)."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    out = []
    for sample in samples:
        record = dict(sample)
        record["arguments"] = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                               for i, arg in enumerate(sample["arguments"])}
        record["resps"] = sanitize_list(sample["resps"])
        record["filtered_resps"] = sanitize_list(sample["filtered_resps"])
        record["target"] = str(sample["target"])
        out.append(json.loads(json.dumps(record, default=handle_non_serializable, ensure_ascii=False)))
    return out


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_dtype(model) -> str:
    """The dtype a loaded model computes in, as a name (``float32``, ``bfloat16``)."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def load_model(path: str | Path, device: str = "cpu", trust_remote_code: bool = False, dtype: str = "auto"):
    """A checkpoint directory (or Hub id) as (model, tokenizer) on ``device``, in ``dtype``
    (``auto``: the checkpoint's dtype on CUDA, float32 on a CPU; :mod:`medmerge.merge.precision`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medmerge.io.checkpoint import Checkpoint

    ckpt = Checkpoint(path)  # refuses pickle-only and adapter checkpoints with a clear error
    resolved = resolve_dtype(dtype, device, ckpt.path)
    model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=torch_dtype(resolved),
                                                 trust_remote_code=trust_remote_code)
    model = model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() as the model's own
    tokenizer = AutoTokenizer.from_pretrained(ckpt.path, trust_remote_code=trust_remote_code)
    model.eval()
    return model, tokenizer


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over the checkpoint's ``{weight file: sha256}`` map (:func:`medmerge.io.provenance.checkpoint_sha256`)."""
    from medmerge.io import provenance
    from medmerge.io.checkpoint import Checkpoint

    prov = provenance.parent_provenance({"model": Checkpoint(path)})["model"]
    return provenance.checkpoint_sha256(prov["weights"])


def _context_length(config) -> int:
    """The model's context for lm-eval (:func:`medmerge.merge.arch.context_length` of its config; 2048 when the config
    does not say): from the loaded model and from config.json alike, so both give the same cache keys."""
    from medmerge.merge.arch import context_length

    return context_length(config) or 2048


def prepare_tasks(settings: EvalSettings) -> dict[str, TaskSpec]:
    """Load and check every task of the requested suites (data files included) before any model loads."""
    return {task: task_spec(task, settings.data_dir)
            for tasks in suite_tasks(list(settings.suites)).values() for task in tasks}


class NonFiniteLogitsError(EvalError):
    """A model's logits became NaN or infinite while it was evaluated: its scores would mean nothing, so it is
    neither scored nor cached nor registered."""


def guard_finite_logits(model, name):
    """Check every forward pass of ``model`` (loglikelihoods and generation alike): non-finite logits raise
    :class:`NonFiniteLogitsError` naming ``name()`` (the model being evaluated). Returns the hook's handle
    (``.remove()``). Two reductions per pass (max and min propagate NaN), no copy of the logits."""

    def check(module, args, output):
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            logits = output[0]
        if isinstance(logits, torch.Tensor) and logits.numel():
            with torch.no_grad():
                top, bottom = logits.amax(), logits.amin()
            if not (torch.isfinite(top) and torch.isfinite(bottom)):
                bad = top if not torch.isfinite(top) else bottom
                raise NonFiniteLogitsError(
                    f"evaluating {name()}: the model's logits are not finite ({bad.item()}): its weights or its "
                    "dtype's range broke the forward pass; nothing was scored, cached or registered")

    return model.register_forward_hook(check)


class ModelEvaluator:
    """Wraps one resident model for lm-eval; weights may be swapped between evaluations."""

    def __init__(self, model, tokenizer, settings: EvalSettings, specs: dict[str, TaskSpec] | None = None):
        from lm_eval.models.huggingface import HFLM

        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        import datasets

        datasets.disable_progress_bars()  # one bar per candidate is ours; per-split bars are noise
        self.hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
                         max_length=_context_length(model.config))
        self.max_gen_toks = settings.max_gen_toks or min(DEFAULT_MAX_GEN_TOKS, _context_length(model.config) // 2)
        self.dtype = model_dtype(model)
        self._vllm = None
        from lm_eval.tasks import TaskManager

        self.task_manager = TaskManager(include_defaults=False)  # our tasks come as configs
        self._specs: dict[str, TaskSpec] = dict(specs or {})
        self._task_objects: dict[tuple[str, int | None], Any] = {}
        self.template = resolve_chat_template(settings.chat_template, self.hflm)
        self._evaluating = "the model"   # evaluate() names it: a checkpoint or a candidate
        guard_finite_logits(model, lambda: self._evaluating)

    @property
    def prompt_format(self) -> dict[str, Any]:
        """The prompt format as lm-eval receives it, and as the report and the cache key record it:
        whether a chat template is applied (and the sha256 of its text), shots as turns, the system
        instruction. Empty for plain prompts without a system instruction (the default)."""
        part: dict[str, Any] = {}
        if self.template is not None:
            part["chat_template_sha256"] = hashlib.sha256(self.template.encode()).hexdigest()
            part["fewshot_as_multiturn"] = self.fewshot_as_multiturn
        if self.settings.system_instruction is not None:
            part["system_instruction"] = self.settings.system_instruction
        return part

    @property
    def fewshot_as_multiturn(self) -> bool:
        if self.template is None:
            return False
        return True if self.settings.fewshot_as_multiturn is None else self.settings.fewshot_as_multiturn

    def _generation_lm(self, model_path: str | None):
        if self.settings.backend != "vllm":
            return self.hflm
        import importlib.util

        if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
            raise EvalError("the vllm backend needs a CUDA GPU and the vllm package; use --backend hf")
        if model_path is None:
            raise EvalError("the vllm backend evaluates checkpoints on disk, not candidates held in memory")
        if self._vllm is None:
            from lm_eval.models.vllm_causallms import VLLM

            self._vllm = VLLM(pretrained=str(model_path), batch_size=self.settings.batch_size, dtype=self.dtype)
        return self._vllm

    def run(self, specs: list[TaskSpec], num_fewshot: int, model_path: str | None = None) -> dict[str, TaskResult]:
        if not specs:
            return {}
        results: dict[str, TaskResult] = {}
        for lm, group in self._by_lm(specs, model_path):
            out = self._simple_evaluate(lm, group, num_fewshot)
            for s in group:
                raw = out["results"][s.name]
                n = out.get("n-samples", {}).get(s.name, {})
                samples = sample_records(out["samples"][s.name]) if self.settings.log_samples else None
                results[s.name] = TaskResult(task=s.name, alias=raw.get("alias"), metrics=metric_values(raw),
                                             n_samples=int(n.get("effective", 0)), num_fewshot=num_fewshot,
                                             config_hash=s.config_hash, samples=samples)
        return results

    def _by_lm(self, specs: list[TaskSpec], model_path: str | None) -> list[tuple[Any, list[TaskSpec]]]:
        """``specs`` grouped by the lm-eval model that runs them: generation tasks on the generation backend
        (vllm when asked), the others on the resident model."""
        by_lm: dict[int, tuple[Any, list[TaskSpec]]] = {}
        for s in specs:
            lm = self._generation_lm(model_path) if s.config.get("output_type") == "generate_until" else self.hflm
            by_lm.setdefault(id(lm), (lm, []))[1].append(s)
        return list(by_lm.values())

    def _simple_evaluate(self, lm, group: list[TaskSpec], num_fewshot: int,
                         samples: dict[str, list[int]] | None = None) -> dict:
        import lm_eval

        try:
            return lm_eval.simple_evaluate(
                model=lm, num_fewshot=num_fewshot,
                # lm-eval's task objects, built once per (task, shots) for every model this evaluator scores: their
                # datasets are loaded once, not once per candidate (lm-eval sets the shots on the object and keeps an
                # explicit 0, so an object never serves two shot counts)
                tasks=[self.task_object(s.name, num_fewshot) for s in group],
                limit=self.settings.limit if samples is None else None, samples=samples,
                log_samples=self.settings.log_samples or samples is not None,
                bootstrap_iters=self.settings.bootstrap_iters,
                apply_chat_template=self.template is not None, fewshot_as_multiturn=self.fewshot_as_multiturn,
                system_instruction=self.settings.system_instruction,
                gen_kwargs={"max_gen_toks": self.max_gen_toks}, random_seed=self.settings.seed,
                numpy_random_seed=self.settings.seed, torch_random_seed=self.settings.seed,
                fewshot_random_seed=self.settings.seed, task_manager=self.task_manager,
            )
        except (ConnectionError, OSError) as exc:
            if self.settings.data_dir is not None:
                raise
            sources = ", ".join(sorted({str(s.config.get("dataset_path")) for s in group}))
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EvalError(
                f"could not load the Hub datasets ({sources}) for {', '.join(s.name for s in group)}: {first}. "
                "Without network access, pass --data-dir with local copies (see README)"
            ) from exc

    def task_object(self, task: str, shots: int | None = None):
        """lm-eval's task object for ``task`` (its documents, its aggregation functions), built once per shot count
        it is run with (``None``: for reading its documents and aggregations only)."""
        key = (task, shots)
        if key not in self._task_objects:
            from lm_eval.tasks import get_task_dict

            self._task_objects[key] = get_task_dict([dict(self.spec(task).config)], self.task_manager)[task]
        return self._task_objects[key]

    def document_count(self, task: str, shots: int | None = None) -> int:
        """How many documents a full evaluation of ``task`` scores: its evaluation split, or ``limit`` of them
        (read from the task object of ``shots``, so that no other is built for it)."""
        n = len(self.task_object(task, shots).eval_docs)
        return n if self.settings.limit is None else min(n, self.settings.limit)

    def run_documents(self, indices: dict[str, list[int]], num_fewshot: int,
                      model_path: str | None = None) -> dict[str, list[dict[str, Any]]]:
        """Score the resident weights on the documents ``indices[task]`` only (lm-eval's ``samples``): per task,
        one ``{"metric,filter": value}`` per document, in the order given (values as lm-eval's
        ``process_results`` gives them: a number, a bool, or a list for IFEval's instruction-level accuracy).
        :func:`task_result_of` aggregates them as lm-eval does. Documents are scored independently only when no
        few-shot examples are drawn (lm-eval draws them in sequence), so callers use ``num_fewshot`` 0."""
        out: dict[str, list[dict[str, Any]]] = {}
        for lm, group in self._by_lm([self.spec(task) for task in indices], model_path):
            # sorted: lm-eval yields the chosen documents in the split's order and names them by the list's order
            res = self._simple_evaluate(lm, group, num_fewshot,
                                        samples={s.name: sorted({int(i) for i in indices[s.name]}) for s in group})
            for s in group:
                per_doc: dict[int, dict[str, Any]] = {}
                for sample in res["samples"][s.name]:
                    doc = per_doc.setdefault(int(sample["doc_id"]), {})
                    for metric in sample["metrics"]:
                        doc[f"{metric},{sample['filter']}"] = _plain(sample[metric])
                out[s.name] = [per_doc[int(i)] for i in indices[s.name]]
        return out

    def spec(self, task: str) -> TaskSpec:
        if task not in self._specs:
            self._specs[task] = task_spec(task, self.settings.data_dir)
        return self._specs[task]

    def lookup(self, identity: str | None, cache: EvalCache | None) -> list[tuple[int, dict, list, dict]]:
        """Per (suite, shots): (shots, cached results, specs still to run, cache keys).

        A task's shots: ``num_fewshot`` when set (it overrides every task, as lm-eval's does), else the
        shots its YAML fixes (lm-eval's stock MMLU-Pro is 5-shot), else its suite's default."""
        return plan_tasks(self.settings, self.spec, self.max_gen_toks, self.dtype, self.prompt_format, identity, cache)

    def evaluate(self, name: str, fingerprint: str, identity: str | None = None, cache: EvalCache | None = None,
                 model_path: str | None = None, prepare=None) -> EvalReport:
        """Evaluate the resident weights; ``identity`` keys the cache (None: no caching).

        ``prepare()`` is called before the first task that is not cached (e.g. to swap the
        candidate's weights in), and not at all when every task is a cache hit.
        """
        t0 = time.perf_counter()
        self._evaluating = name
        plan = self.lookup(identity, cache)
        if prepare is not None and any(todo for _, _, todo, _ in plan):
            prepare()
        results: dict[str, TaskResult] = {}
        cached: list[str] = []
        for shots, hits, todo, keys in plan:
            results.update(hits)
            cached.extend(hits)
            for task, result in self.run(todo, shots, model_path).items():
                if keys.get(task) and cache is not None:
                    result = cache.put(keys[task], result)
                results[task] = result
        return make_report(name, fingerprint, results, self.settings, time.perf_counter() - t0, cached,
                           max_gen_toks=self.max_gen_toks, dtype=self.dtype, prompt_format=self.prompt_format)


def _plain(value):
    """A per-document metric value as plain JSON (numpy scalars and tuples become numbers and lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def task_result_of(task_obj, spec: TaskSpec, documents: list[dict[str, Any]], num_fewshot: int,
                   bootstrap_iters: int) -> TaskResult:
    """A task's result from its per-document values (:meth:`ModelEvaluator.run_documents`, in document order),
    aggregated by lm-eval's own code (the task's aggregation functions and their stderrs): what one lm-eval run
    over the same documents reports."""
    from lm_eval.evaluator_utils import _compute_task_aggregations

    raw: dict[tuple[str, str], list] = {}
    for doc in documents:
        for key, value in doc.items():
            metric, filt = key.split(",", 1)
            raw.setdefault((metric, filt), []).append(value)
    agg, n = _compute_task_aggregations(task_obj, raw, bootstrap_iters)
    return TaskResult(task=spec.name, alias=spec.config.get("task_alias", spec.name), metrics=metric_values(agg),
                      n_samples=int(n), num_fewshot=num_fewshot, config_hash=spec.config_hash)


def metric_values(results: dict[str, Any]) -> dict[str, MetricValue]:
    """``{metric: MetricValue}`` from lm-eval's results for one task (``"metric,filter": value`` with
    ``"metric_stderr,filter"`` beside it; "N/A" and other non-numbers are no value / no stderr)."""
    metrics = {}
    for key, value in results.items():
        if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        stderr = results.get(f"{metric}_stderr,{filt}")
        metrics[metric] = MetricValue(value=float(value), stderr=float(stderr) if isinstance(stderr, (int, float)) else None)
    return metrics


def make_report(name: str, fingerprint: str, results: dict[str, TaskResult], settings: EvalSettings,
                seconds: float, cached: list[str], max_gen_toks: int, dtype: str | None = None,
                prompt_format: dict[str, Any] | None = None) -> EvalReport:
    """The report; its ``settings`` hold the settings as given and as resolved (``max_gen_toks``, ``dtype``,
    ``chat_template_applied`` and the prompt format lm-eval received)."""
    from medmerge.evaluation.objectives import suite_scores

    prompt_format = prompt_format or {}
    resolved = {"max_gen_toks": max_gen_toks, "dtype": dtype or settings.dtype,
                "chat_template_applied": "chat_template_sha256" in prompt_format, **prompt_format}
    report = EvalReport(
        model=name, model_fingerprint=fingerprint, suites=list(settings.suites), tasks=results,
        lm_eval_version=lm_eval_version(), medmerge_version=__version__,
        settings={**asdict(settings), **resolved},
        seconds=round(seconds, 3), cached_tasks=cached,
    )
    scores = suite_scores(report)   # what suites.yaml declares under score:, each with its stderr, once
    return report.model_copy(update={"scores": scores})


def plan_tasks(settings: EvalSettings, spec_of, max_gen_toks: int, dtype: str, prompt_format: dict[str, Any],
               identity: str | None, cache: EvalCache | None) -> list[tuple[int, dict, list, dict]]:
    """Per (suite, shots): (shots, cached results, specs still to run, cache keys); see ModelEvaluator.lookup."""
    suites = load_suites()
    plan: dict[tuple[str, int], tuple[int, dict, list, dict]] = {}
    seen: set[str] = set()
    for suite, tasks in suite_tasks(list(settings.suites)).items():
        for task in tasks:
            if task in seen:
                continue
            seen.add(task)
            spec = spec_of(task)
            shots = settings.num_fewshot
            if shots is None:
                own = spec.config.get("num_fewshot")
                shots = suites[suite]["num_fewshot"] if own is None else int(own)
            _, hits, todo, keys = plan.setdefault((suite, shots), (shots, {}, [], {}))
            part = settings.cache_part(shots, max_gen_toks, dtype, prompt_format)
            key = cache_key(identity, spec.config_hash, part) if identity and cache else None
            hit = cache.get(key, samples=settings.log_samples) if key and cache else None
            if hit is not None:
                hits[task] = hit
            else:
                todo.append(spec)
                keys[task] = key
    return list(plan.values())


def _all_cached(path: str | Path, fingerprint: str, settings: EvalSettings, specs: dict[str, TaskSpec],
                cache: EvalCache | None) -> EvalReport | None:
    """The report of a checkpoint every task of which is in the cache, made without loading the model (its
    cache keys need only config.json and the settings); None when any task is not (the cache's counters are
    left as they were). Plain prompts only: a chat template's key needs the tokenizer."""
    from medmerge.io.checkpoint import Checkpoint
    from medmerge.merge.arch import context_length

    if cache is None or settings.chat_template != "none" or settings.backend != "hf":
        return None
    t0 = time.perf_counter()
    ckpt = Checkpoint(path)
    try:
        context = context_length(json.loads((Path(ckpt.path) / "config.json").read_text()))
    except (OSError, ValueError):
        return None
    if context is None:   # another name for it, which only the model's config class knows
        return None
    max_gen_toks = settings.max_gen_toks or min(DEFAULT_MAX_GEN_TOKS, context // 2)
    dtype = resolve_dtype(settings.dtype, settings.device, ckpt.path)
    prompt = {} if settings.system_instruction is None else {"system_instruction": settings.system_instruction}
    counts = cache.hits, cache.misses
    plan = plan_tasks(settings, specs.__getitem__, max_gen_toks, dtype, prompt, f"checkpoint:{fingerprint}", cache)
    if any(todo for _, _, todo, _ in plan):
        cache.hits, cache.misses = counts
        return None
    results = {task: r for _, hits, _, _ in plan for task, r in hits.items()}
    return make_report(str(path), fingerprint, results, settings, time.perf_counter() - t0, list(results),
                       max_gen_toks=max_gen_toks, dtype=dtype, prompt_format=prompt)


def evaluate_checkpoint(path: str | Path, settings: EvalSettings, cache: EvalCache | None = None,
                        trust_remote_code: bool = False) -> EvalReport:
    """Evaluate a checkpoint directory; cached by its weight hashes (every task cached: the model is not
    even loaded)."""
    specs = prepare_tasks(settings)
    fingerprint = checkpoint_fingerprint(path)
    report = _all_cached(path, fingerprint, settings, specs, cache)
    if report is not None:
        return report
    model, tokenizer = load_model(path, settings.device, trust_remote_code, settings.dtype)
    ev = ModelEvaluator(model, tokenizer, settings, specs)
    return ev.evaluate(str(path), fingerprint, identity=f"checkpoint:{fingerprint}", cache=cache,
                       model_path=str(path))
