"""The forgetting gate: did fine-tuning cost a candidate its benchmark scores?

After SFT the clinical and IFEval suites are re-run and compared with the same candidate's
pre-SFT report. For every score s with standard error se (per task metric, plus Medical Avg
and IF score):

    drop = before − after
    fails  ⇔  drop > margin + sqrt(se_before² + se_after²)

i.e. a drop counts only when it exceeds the configured margin by more than the two
measurements' combined standard error. The gate passes when no score fails.

The two means get a standard error from their parts: Medical Avg, the mean of n task
accuracies, ``se = sqrt(Σ se_i²) / n`` (independent tasks); IF score, the mean of prompt- and
instruction-level strict accuracy, ``se = (se_prompt + se_inst) / 2`` (the two are strongly
correlated, so their errors add rather than combine in quadrature; a missing instruction-level
stderr, which lm-eval does not report, takes the prompt-level one). A task metric with no
stderr at all is shown in the table but not gated: its drop cannot be told from noise (the IF
score, which includes it, is gated).
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from medmerge.evaluation.report import EvalReport
from medmerge.io.tables import text_table


class ScoreChange(BaseModel):
    score: str
    before: float
    after: float
    drop: float
    allowed: float | None             # None: no stderr known, so the score is shown but not gated
    failed: bool


class ForgettingReport(BaseModel):
    margin: float
    passed: bool
    changes: list[ScoreChange]

    @property
    def failures(self) -> list[ScoreChange]:
        return [c for c in self.changes if c.failed]

    def table(self) -> str:
        rows = [("score", "before", "after", "drop", "allowed", "")]
        for c in self.changes:
            rows.append((c.score, f"{c.before:.4f}", f"{c.after:.4f}", f"{c.drop:+.4f}",
                         "n/a" if c.allowed is None else f"{c.allowed:.4f}",
                         "FORGOT" if c.failed else ("not gated (no stderr)" if c.allowed is None else "ok")))
        return text_table(rows, rule=False)


def _scores(report: EvalReport) -> dict[str, tuple[float, float | None]]:
    """Every task metric and every suite score (``report.scores``: computed once, in make_report; a report
    made before it held them gets them from medmerge.evaluation.objectives.suite_scores) as ``(value, stderr)``."""
    from medmerge.evaluation.objectives import suite_scores

    out = {}
    for task, res in report.tasks.items():
        for metric, v in res.metrics.items():
            out[f"{task}.{metric}"] = (v.value, v.stderr)
    for name, v in (report.scores or suite_scores(report)).items():
        out[name] = (v.value, 0.0 if v.stderr is None else v.stderr)   # a suite score is always gated
    return out


def forgetting_gate(before: EvalReport, after: EvalReport, margin: float = 0.02) -> ForgettingReport:
    """Compare ``after`` (post-SFT) with ``before`` (pre-SFT) on every score both reports hold."""
    if margin < 0 or math.isnan(margin):
        raise ValueError(f"margin must be >= 0, got {margin}")
    b, a = _scores(before), _scores(after)
    common = [k for k in b if k in a]
    if not common:
        raise ValueError("the two reports share no score to compare")
    changes = []
    for k in common:
        (vb, sb), (va, sa) = b[k], a[k]
        drop = vb - va
        if sb is None or sa is None:  # lm-eval gave no stderr (IFEval's instruction-level accuracy)
            changes.append(ScoreChange(score=k, before=vb, after=va, drop=drop, allowed=None, failed=False))
            continue
        allowed = margin + math.sqrt(sb * sb + sa * sa)
        changes.append(ScoreChange(score=k, before=vb, after=va, drop=drop, allowed=allowed, failed=drop > allowed))
    return ForgettingReport(margin=margin, passed=not any(c.failed for c in changes), changes=changes)
