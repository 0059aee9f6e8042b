"""Validate a generation dataset with Great Expectations 1.x (core API) before fine-tuning.

:func:`validate_dataset` builds an *ephemeral* GX data context, a pandas data source with a
dataframe asset and a whole-dataframe batch definition, an :class:`ExpectationSuite` and a
:class:`ValidationDefinition`, runs it on the examples, and returns a typed
:class:`ValidationReport`. Expectations (their ``name`` in the report):

================================  ==========================================================
``required_columns``              ``ExpectTableColumnsToMatchSet`` (id, input, target present)
``ids_not_null``                  ``ExpectColumnValuesToNotBeNull`` on ``id``
``ids_unique``                    ``ExpectColumnValuesToBeUnique`` on ``id``
``input_not_empty``               ``ExpectColumnValuesToBeBetween`` on ``input_chars`` >= 1
``target_not_empty``              ``ExpectColumnValuesToBeBetween`` on ``target_chars`` >= 1
``input_target_pairs_unique``     ``ExpectCompoundColumnsToBeUnique`` on (input, target)
``row_count``                     ``ExpectTableRowCountToBeBetween`` (``min_rows``, ``max_rows``)
``input_fits_context``            ``ExpectColumnValuesToBeBetween`` on ``input_tokens``
                                  <= ``max_input_tokens`` (only when that is given)
================================  ==========================================================

Helper columns added before validation: ``input_chars`` / ``target_chars`` (length after
``str.strip()``; null counts as 0, so empty, whitespace-only and null text all fail) and
``input_tokens`` (token count of the input by ``tokenizer``). A tokenizer is any callable
``str -> list | int`` (e.g. ``str.split``), a 🤗 ``transformers`` tokenizer, or a raw
``tokenizers.Tokenizer``; counts include the tokenizer's special tokens, so leave headroom
in ``max_input_tokens`` for the prompt template.

When a required column is missing, the expectations that need it are not run (GX would only
raise on them) and are listed in ``report.skipped``; ``required_columns`` fails.

Offending ids are computed here, not taken from GX's unexpected value lists (those hold
values, not ids): the row positions GX reports (``partial_unexpected_index_list``) are mapped
back to the dataframe's ids, falling back to a pandas computation of the same condition.

Cost: importing ``great_expectations`` takes ~3-5 s once per process (it is imported lazily,
on the first call); building the ephemeral context and running the suite takes ~0.1 s for a
few thousand rows. The context is in-memory, with analytics and progress bars off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict

from medmerge.generation.data import DataError, GenerationExample
from medmerge.io.tables import markdown_table

__all__ = [
    "DataValidationError",
    "ExpectationOutcome",
    "ValidationReport",
    "count_tokens",
    "to_dataframe",
    "validate_dataset",
]

REQUIRED_COLUMNS = ("id", "input", "target")
MAX_OFFENDING_IDS = 5


class DataValidationError(DataError):
    """A dataset failed validation; the message names each failed expectation and offending ids."""

    def __init__(self, message: str, report: ValidationReport | None = None):
        super().__init__(message)
        self.report = report


class ExpectationOutcome(BaseModel):
    """The result of one expectation."""

    model_config = ConfigDict(frozen=True)

    name: str                          # e.g. "ids_unique"
    expectation: str                   # GX type, e.g. "expect_column_values_to_be_unique"
    success: bool
    expected: str                      # human-readable condition
    observed_value: Any = None         # GX's observed value, or {"unexpected_count", "element_count"}
    unexpected_count: int | None = None
    offending_ids: list[str] = []      # at most MAX_OFFENDING_IDS
    details: str | None = None         # e.g. missing column names, GX exception message


class ValidationReport(BaseModel):
    """Typed summary of one validation run. ``raise_if_failed()`` turns failures into an error."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    success: bool
    n_rows: int
    expectations: list[ExpectationOutcome]
    skipped: dict[str, str] = {}       # expectation name -> why it was not run
    gx_version: str
    seconds: float                     # wall time of context + suite + run (not the GX import)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [e for e in self.expectations if not e.success]

    def outcome(self, name: str) -> ExpectationOutcome:
        for e in self.expectations:
            if e.name == name:
                return e
        raise KeyError(name)

    def failure_message(self) -> str:
        failed = self.failed
        lines = [f"dataset {self.dataset!r} ({self.n_rows} rows) failed "
                 f"{len(failed)} of {len(self.expectations)} expectation(s):"]
        for e in failed:
            line = f"  - {e.name} ({e.expectation}): expected {e.expected}"
            if e.unexpected_count is not None:
                line += f"; {e.unexpected_count} offending row(s)"
            elif e.observed_value is not None:
                line += f"; observed {_short(e.observed_value)}"
            if e.offending_ids:
                line += f"; ids: {', '.join(e.offending_ids)}"
            if e.details:
                line += f" ({e.details})"
            lines.append(line)
        if self.skipped:
            lines.append(f"  not run: {', '.join(self.skipped)}")
        return "\n".join(lines)

    def raise_if_failed(self) -> ValidationReport:
        if not self.success:
            raise DataValidationError(self.failure_message(), report=self)
        return self

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def to_markdown(self) -> str:
        status = "PASSED" if self.success else "FAILED"
        out = [
            f"## Data validation: `{self.dataset}` — {status}",
            "",
            f"{self.n_rows} rows; {len(self.expectations) - len(self.failed)}/"
            f"{len(self.expectations)} expectations met; great_expectations {self.gx_version}; "
            f"{self.seconds:.2f} s.",
            "",
        ]
        rows = []
        for e in self.expectations:
            if e.unexpected_count is not None:
                observed = f"{e.unexpected_count} offending"
                if isinstance(e.observed_value, dict) and "max_input_tokens" in e.observed_value:
                    observed += f"; longest input {e.observed_value['max_input_tokens']} tokens"
            else:
                observed = _short(e.observed_value)
            if e.details:
                observed += f" ({e.details})"
            ids = ", ".join(f"`{i}`" for i in e.offending_ids)
            rows.append([e.name, f"`{e.expectation}`", "✅" if e.success else "❌", _md(e.expected), _md(observed),
                         _md(ids)])
        out.append(markdown_table(["expectation", "GX type", "ok", "expected", "observed", "offending ids"], rows))
        if self.skipped:
            out += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())]
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# tokenisation and frames
# --------------------------------------------------------------------------------------------

Tokenizer = Any  # callable str -> list|int, transformers tokenizer, or tokenizers.Tokenizer


def count_tokens(texts: Sequence[str], tokenizer: Tokenizer) -> list[int]:
    """Token counts of ``texts``: callable ``str -> list|int``, HF tokenizer, or ``tokenizers.Tokenizer``."""
    texts = list(texts)
    if not texts:
        return []
    # raw `tokenizers.Tokenizer`: encode_batch -> Encoding objects with .ids
    if hasattr(tokenizer, "encode_batch") and not hasattr(tokenizer, "model_max_length"):
        return [len(enc.ids) for enc in tokenizer.encode_batch(texts)]
    # transformers tokenizer: batched call -> {"input_ids": [[...], ...]}
    if hasattr(tokenizer, "model_max_length") and callable(tokenizer):
        enc = tokenizer(texts, add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable or a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    return [_count_one(tokenizer(t)) for t in texts]


def _count_one(result: Any) -> int:
    if isinstance(result, bool):
        raise TypeError("tokenizer returned a bool")
    if isinstance(result, int):
        return result
    if isinstance(result, Mapping) or hasattr(result, "keys"):
        return len(result["input_ids"])
    if hasattr(result, "ids"):
        return len(result.ids)
    return len(result)


def to_dataframe(
    data: pd.DataFrame | Sequence[GenerationExample | Mapping[str, Any]],
    *,
    id_field: str = "id",
    input_field: str = "input",
    target_field: str = "target",
) -> pd.DataFrame:
    """The ``id``/``input``/``target`` columns present in ``data`` (renamed to those names), RangeIndex."""
    if isinstance(data, pd.DataFrame):
        df = data
    else:
        rows = [d.model_dump(exclude={"extra"}) if isinstance(d, GenerationExample) else dict(d)
                for d in data]
        df = pd.DataFrame(rows)
    fields = {id_field: "id", input_field: "input", target_field: "target"}
    keep = [c for c in fields if c in df.columns]
    return df[keep].rename(columns=fields).reset_index(drop=True)


def _char_len(s: pd.Series) -> pd.Series:
    return s.map(lambda v: len(v.strip()) if isinstance(v, str) else 0).astype("int64")


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def validate_dataset(
    data: pd.DataFrame | Sequence[GenerationExample | Mapping[str, Any]],
    *,
    name: str = "dataset",
    min_rows: int = 1,
    max_rows: int | None = None,
    max_input_tokens: int | None = None,
    tokenizer: Tokenizer | None = None,
    id_field: str = "id",
    input_field: str = "input",
    target_field: str = "target",
) -> ValidationReport:
    """Run the expectation suite on ``data`` and return a :class:`ValidationReport`.

    ``data`` is a list of :class:`GenerationExample` (what :func:`load_task` returns), a list
    of dicts, or a DataFrame; ``*_field`` name the columns when they are not id/input/target.
    ``max_input_tokens`` needs a ``tokenizer``; with a tokenizer but no limit, token counts are
    computed and their maximum is recorded but not checked. The report does not raise; call
    ``report.raise_if_failed()``.
    """
    if max_input_tokens is not None and tokenizer is None:
        raise ValueError("max_input_tokens needs a tokenizer (a callable or a Hugging Face tokenizer)")
    if max_rows is not None and max_rows < min_rows:
        raise ValueError(f"max_rows ({max_rows}) < min_rows ({min_rows})")

    df = to_dataframe(data, id_field=id_field, input_field=input_field, target_field=target_field)
    present = set(df.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if "input" in present:
        df["input_chars"] = _char_len(df["input"])
    if "target" in present:
        df["target_chars"] = _char_len(df["target"])
    if "input" in present and tokenizer is not None:
        texts = [v if isinstance(v, str) else "" for v in df["input"]]
        df["input_tokens"] = pd.Series(count_tokens(texts, tokenizer), index=df.index, dtype="int64")

    import great_expectations as gx  # lazy: the import costs seconds

    specs = _expectation_specs(gx, df, missing, min_rows, max_rows, max_input_tokens)
    skipped = {s.name: f"column(s) {', '.join(s.needs_missing)} missing"
               for s in specs if s.needs_missing}
    runnable = [s for s in specs if not s.needs_missing]

    t0 = time.perf_counter()
    results = _run_suite(gx, df, runnable)
    seconds = time.perf_counter() - t0

    outcomes = [_outcome(spec, results.get(spec.name), df) for spec in runnable]
    return ValidationReport(
        dataset=name,
        success=all(o.success for o in outcomes),
        n_rows=len(df),
        expectations=outcomes,
        skipped=skipped,
        gx_version=gx.__version__,
        seconds=round(seconds, 4),
    )


class _Spec:
    """One expectation: the GX object, what it needs, and how to find offending rows in pandas."""

    def __init__(self, name: str, expectation: Any, expected: str, needs: tuple[str, ...],
                 missing: Sequence[str], offenders: Callable[[pd.DataFrame], pd.Series] | None = None,
                 details: Callable[[dict], str | None] | None = None):
        self.name = name
        self.expectation = expectation
        self.expected = expected
        self.needs_missing = [c for c in needs if c in missing]
        self.offenders = offenders      # boolean mask of offending rows
        self.details = details


def _expectation_specs(gx, df: pd.DataFrame, missing: Sequence[str], min_rows: int,
                       max_rows: int | None, max_input_tokens: int | None) -> list[_Spec]:
    E = gx.expectations
    meta = lambda n: {"medmerge_name": n}  # noqa: E731
    specs = [
        _Spec("required_columns",
              E.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False,
                                             meta=meta("required_columns")),
              f"columns {', '.join(REQUIRED_COLUMNS)} present", (), missing,
              details=lambda r: (f"missing: {', '.join(missing)}" if missing else None)),
        _Spec("ids_not_null",
              E.ExpectColumnValuesToNotBeNull(column="id", meta=meta("ids_not_null")),
              "no null id", ("id",), missing,
              offenders=lambda d: d["id"].isna()),
        _Spec("ids_unique",
              E.ExpectColumnValuesToBeUnique(column="id", meta=meta("ids_unique")),
              "unique ids", ("id",), missing,
              offenders=lambda d: d["id"].notna() & d["id"].duplicated(keep=False)),
        _Spec("input_not_empty",
              E.ExpectColumnValuesToBeBetween(column="input_chars", min_value=1, meta=meta("input_not_empty")),
              "non-empty input after strip()", ("input",), missing,
              offenders=lambda d: d["input_chars"] < 1),
        _Spec("target_not_empty",
              E.ExpectColumnValuesToBeBetween(column="target_chars", min_value=1, meta=meta("target_not_empty")),
              "non-empty target after strip()", ("target",), missing,
              offenders=lambda d: d["target_chars"] < 1),
        _Spec("input_target_pairs_unique",
              E.ExpectCompoundColumnsToBeUnique(column_list=["input", "target"],
                                                meta=meta("input_target_pairs_unique")),
              "no duplicated (input, target) pair", ("input", "target"), missing,
              offenders=lambda d: d.duplicated(subset=["input", "target"], keep=False)),
        _Spec("row_count",
              E.ExpectTableRowCountToBeBetween(min_value=min_rows, max_value=max_rows, meta=meta("row_count")),
              f"between {min_rows} and {max_rows if max_rows is not None else 'any number of'} rows",
              (), missing),
    ]
    if max_input_tokens is not None:
        specs.append(_Spec(
            "input_fits_context",
            E.ExpectColumnValuesToBeBetween(column="input_tokens", min_value=0, max_value=max_input_tokens,
                                            meta=meta("input_fits_context")),
            f"input <= {max_input_tokens} tokens", ("input",), missing,
            offenders=lambda d: d["input_tokens"] > max_input_tokens))
    return specs


def _run_suite(gx, df: pd.DataFrame, specs: list[_Spec]) -> dict[str, Any]:
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas(name="medmerge_generation")
    asset = source.add_dataframe_asset(name="examples")
    batch_definition = asset.add_batch_definition_whole_dataframe("whole_dataframe")
    suite = context.suites.add(gx.ExpectationSuite(name="medmerge_generation_data"))
    for spec in specs:
        suite.add_expectation(spec.expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="medmerge_generation_validation", data=batch_definition, suite=suite))
    result = validation.run(
        batch_parameters={"dataframe": df},
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
    )
    return {r.expectation_config.meta.get("medmerge_name"): r for r in result.results}


def _outcome(spec: _Spec, res: Any, df: pd.DataFrame) -> ExpectationOutcome:
    gx_type = spec.expectation.expectation_type
    if res is None:  # should not happen: GX returns one result per expectation
        return ExpectationOutcome(name=spec.name, expectation=gx_type, success=False, expected=spec.expected,
                                  details="no result from great_expectations")
    result = dict(res.result or {})
    exc = res.exception_info or {}
    error = None
    if isinstance(exc, dict) and exc.get("raised_exception"):
        error = exc.get("exception_message")
    elif isinstance(exc, dict):  # keyed by metric id when a metric raised
        for v in exc.values():
            if isinstance(v, dict) and v.get("raised_exception"):
                error = v.get("exception_message")
                break
    success = bool(res.success) and error is None

    unexpected_count = result.get("unexpected_count")
    if "observed_value" in result:
        observed = _jsonable(result["observed_value"])
    elif unexpected_count is not None:
        observed = {"unexpected_count": int(unexpected_count),
                    "element_count": int(result.get("element_count", len(df)))}
    else:
        observed = None
    if spec.name == "required_columns" and isinstance(observed, list):
        observed = [c for c in observed if c in REQUIRED_COLUMNS]  # hide the helper columns
    if spec.name == "input_fits_context" and "input_tokens" in df and len(df):
        observed = {**(observed or {}), "max_input_tokens": int(df["input_tokens"].max())}

    offending: list[str] = []
    if not success:
        offending = _offending_ids(df, result.get("partial_unexpected_index_list"), spec)

    details = error or (spec.details(result) if spec.details else None)
    return ExpectationOutcome(
        name=spec.name, expectation=gx_type, success=success, expected=spec.expected,
        observed_value=observed,
        unexpected_count=int(unexpected_count) if unexpected_count is not None else None,
        offending_ids=offending, details=details)


def _offending_ids(df: pd.DataFrame, index_list: Any, spec: _Spec) -> list[str]:
    positions: list[int] = []
    if isinstance(index_list, list) and all(isinstance(i, int) for i in index_list):
        positions = [i for i in index_list if 0 <= i < len(df)]
    if not positions and spec.offenders is not None:
        mask = spec.offenders(df)
        positions = [int(i) for i in mask[mask].index]
    ids: list[str] = []
    for pos in positions:
        rid = df["id"].iat[pos] if "id" in df else None
        label = f"row {pos}" if rid is None or (isinstance(rid, float) and pd.isna(rid)) else str(rid)
        if label not in ids:
            ids.append(label)
        if len(ids) == MAX_OFFENDING_IDS:
            break
    return ids


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return json.loads(json.dumps(v, default=str))


def _short(v: Any, limit: int = 120) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")
