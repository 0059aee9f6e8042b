"""The steps that choose phase two's picks and decide promotions, at the end of both pipelines
(``medmerge.selection.promotion``)."""

from __future__ import annotations

from typing import Annotated

from zenml import step

import materializers  # noqa: F401  (registers the medmerge materializers)
from medmerge.finetune import FinetuneConfig, FinetuneSummary, SFTResult, TrackingRun
from medmerge.selection import promotion
from medmerge.selection.promotion import Picks, PromotionDecision
from medmerge.selection.search import Frontier, SearchConfig, SearchResults
from steps.failure import claim_registrations, fail_tracked_runs


@step(on_failure=fail_tracked_runs, on_success=claim_registrations)
def choose_picks(config: SearchConfig, results: SearchResults, frontier: Frontier) -> Annotated[Picks, "picks"]:
    """In: the reports and the frontier. Out: ``{alias: candidate}`` for ``picks:`` and the candidate the
    ``promote:`` policy names. Fails, before anything is written or registered, on a name that is no candidate."""
    return promotion.choose(config.picks, config.promote, frontier, results)


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def promote(config: SearchConfig, results: SearchResults, frontier: Frontier, picks: Picks,
            versions: dict) -> Annotated[PromotionDecision, "promotion"]:
    """In: the registered versions and the picks. Out: the decision. Points ``@pick-*`` at the picks; compares
    the policy's candidate with ``@staging`` on the objectives (with their stderr) and promotes it unless it
    is dominated; logs the decision, both versions' scores and the reason. Never cached: @staging may have
    moved since (``medmerge promote``)."""
    return promotion.promote_search(config, results, frontier, picks, versions)


@step(enable_cache=False, on_failure=fail_tracked_runs, on_success=claim_registrations)
def promote_finetuned(config: FinetuneConfig, run: TrackingRun, results: list[SFTResult],
                      summary: FinetuneSummary) -> Annotated[PromotionDecision, "promotion"]:
    """In: every result and the registered versions. Out: the decision. Compares the ``promote:`` policy's
    fine-tuned model with ``@staging`` (composite, Medical Avg, IF score) and promotes it unless dominated;
    logs why. Never cached: @staging may have moved since."""
    return promotion.promote_finetuned(config, run, results, summary.versions)
