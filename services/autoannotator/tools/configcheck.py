"""Warnings about a valid config that will not do what its user wants (``check-config`` prints them).

Routing that cannot route: with the paper's vote rule a record is accepted when
``U = 1 - max_votes/k < eps`` and the vote is not tied. For k specialists and L labels the
possible votes are the splits of k into at most L counts, so whether any record can ever reach
review (or every record must) follows from k, L and eps alone: with k = 1 every vote is unanimous;
with two labels and k = 3 a 2-to-1 split has U = 0.33, accepted under the default eps 0.34.
Under ``soft`` the top mean probability is never below 1/L, so ``tau <= 1/L`` accepts every
untied record, and ``tau >= 1`` accepts only certainty.

``error-bounded`` (the default) can always route: a version set goes to review until its audit
window certifies a threshold. It routes everything only when no threshold can ever be certified:
fewer samples fit in the window than ``min_audit_samples``, or even a window of correct outcomes
has an upper error bound above ``target_error``. Under every policy the audit sample
(``audit_rate``) reaches review anyway, so "never" means "nothing but the audit sample".
"""

from __future__ import annotations

from collections.abc import Iterator

from autoannotator.config import PipelineConfig
from autoannotator.errorbound import clopper_pearson_upper


def vote_splits(k: int, labels: int) -> Iterator[tuple[int, ...]]:
    """Every way k votes can fall on at most ``labels`` labels (counts in non-increasing order)."""

    def parts(rest: int, most: int, slots: int) -> Iterator[tuple[int, ...]]:
        if rest == 0:
            yield ()
            return
        if slots == 0:
            return
        for first in range(min(rest, most), 0, -1):
            for tail in parts(rest - first, first, slots - 1):
                yield (first, *tail)

    yield from parts(k, k, labels)


def vote_reaches_review(k: int, labels: int, eps: float) -> tuple[bool, bool]:
    """(some full vote goes to review, every full vote goes to review) under the vote rule."""
    routed = []
    for split in vote_splits(k, labels):
        top = split[0]
        tie = split.count(top) > 1
        routed.append(1.0 - top / k >= eps or tie)
    return any(routed), all(routed)


def routing_warnings(config: PipelineConfig) -> list[str]:
    """Why the routing settings can never send a record to review, or always will."""
    k, n_labels = len(config.specialists), len(config.task.labels)
    voter = config.voter
    if k == 0:
        return ["specialists: none configured, so the voter cannot start; build some with `autoannotator train "
                "--config ... --data labelled.csv`"]
    if voter.audit_rate >= 1.0:
        return [f"voter: audit_rate {voter.audit_rate} sends every record to review under every policy"]
    beyond = f" beyond the audit sample (audit_rate {voter.audit_rate})" if voter.audit_rate > 0 else ""
    if voter.policy == "vote":
        some, every = vote_reaches_review(k, n_labels, voter.eps)
        if not some:
            top = max(-(-k // n_labels), 1)
            return [f"voter: policy vote with k={k} specialists, {n_labels} labels and eps={voter.eps} never sends a "
                    f"record to review{beyond} (the most split vote has U = 1 - {top}/{k} = {1 - top / k:.2f} < eps); "
                    "use policy error-bounded (the default), or soft with a calibrated tau, or more specialists"]
        if every:
            return [f"voter: policy vote with k={k} and eps={voter.eps} sends every record to review"]
    elif voter.policy == "soft":
        if voter.tau <= 1.0 / n_labels:
            return [f"voter: policy soft with tau={voter.tau} <= 1/{n_labels} accepts every record that is not an "
                    f"exact tie; nothing reaches review{beyond}"]
        if voter.tau >= 1.0:
            return [f"voter: policy soft with tau={voter.tau} accepts only probability 1: (almost) every record "
                    "goes to review"]
    else:
        return error_bounded_warnings(config)
    return []


def error_bounded_warnings(config: PipelineConfig) -> list[str]:
    """Why ``error-bounded`` can never certify a threshold (so every record goes to review); else nothing."""
    voter = config.voter
    if voter.min_audit_samples > voter.audit_window:
        return [f"voter: min_audit_samples {voter.min_audit_samples} > audit_window {voter.audit_window}: no "
                "threshold can ever be certified, so every record goes to review"]
    best = clopper_pearson_upper(0, voter.audit_window, voter.bound_confidence)
    if best > voter.target_error:
        return [f"voter: target_error {voter.target_error} is below the best bound {voter.audit_window} correct "
                f"audit outcomes can certify ({best:.4f} at bound_confidence {voter.bound_confidence}): every "
                "record goes to review; raise target_error or audit_window"]
    return []


def price_warnings(config: PipelineConfig) -> list[str]:
    """A reviewer LLM without a price: spend metrics and the budget would count zero dollars."""
    if config.reviewer.mode == "human":
        return []
    model = config.reviewer.llm.model
    if model in config.reviewer.llm.prices:
        return []
    budget = config.reviewer.budget
    limit = " and the budget never trips" if budget.max_usd_per_hour or budget.max_usd_total else ""
    return [f"reviewer.llm.prices: no price for model {model!r}: its spend is counted as $0{limit}; add "
            f"reviewer.llm.prices.{model}: {{input_per_mtok: ..., output_per_mtok: ...}}"]


def config_warnings(config: PipelineConfig) -> list[str]:
    """Every warning about a config that validates."""
    return routing_warnings(config) + price_warnings(config)
