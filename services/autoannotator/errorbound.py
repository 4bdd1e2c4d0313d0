"""Error-bounded routing math (DESIGN.md, "Routing" and "Audit stream"), shared by the voter and the trainer.

The audit stream gives pairs ``(score, correct)``: the calibrated top mean probability the voter
saw for a record, and whether the consensus label equalled the reviewer's label. The records are
chosen independently of their score (a hash of the id, or every record while no threshold is
certified), so the pairs are a uniform sample of the stream.

From them :func:`certify_threshold` picks the lowest threshold ``t`` on a fixed grid whose
Clopper-Pearson upper confidence bound on the error of the labels it would accept (records with
``score >= t``) is at most the target. The grid is scanned from the most confident threshold
downwards and the scan stops at the first threshold that fails (fixed-sequence testing, as in
Learn-then-Test, Angelopoulos et al. 2021), so no union bound over the grid is needed. Thresholds
with fewer than ``min_samples`` audit samples above them are not tested: which ones those are
depends only on the scores, never on the labels, so the sequence is still fixed given the scores.

Pure Python: the window holds at most a few thousand pairs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ACCEPT_NOTHING",
    "Certified",
    "audit_chosen",
    "bound_at",
    "certify_threshold",
    "clopper_pearson_upper",
    "default_grid",
]

# The conservative end: no score reaches it, so every record goes to review.
ACCEPT_NOTHING = math.inf


def audit_chosen(record_id: str, rate: float, *, salt: str = "audit") -> bool:
    """Whether ``record_id`` falls in the hash-chosen share ``rate`` (stable under replay and restarts)."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(f"{salt}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """``log P(X <= k)`` for ``X ~ Binomial(n, p)``, summed in log space (stable for n in the thousands)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 0.0 if k >= n else -math.inf
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k + 1)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(errors: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper confidence bound on an error rate after ``errors`` in ``n`` trials.

    The ``p`` at which seeing ``errors`` or fewer has probability ``1 - confidence``; 1.0 for n = 0.
    """
    if n <= 0:
        return 1.0
    if not 0 <= errors <= n:
        raise ValueError(f"errors must be within [0, n], got {errors} of {n}")
    if errors == n:
        return 1.0
    alpha = 1.0 - confidence
    log_alpha = math.log(alpha)
    if errors == 0:  # closed form: (1 - p)^n = alpha
        return 1.0 - alpha ** (1.0 / n)
    lo, hi = errors / n, 1.0
    for _ in range(60):  # bisection to ~1e-18: the CDF falls monotonically in p
        mid = (lo + hi) / 2
        if _log_binom_cdf(errors, n, mid) > log_alpha:
            lo = mid
        else:
            hi = mid
    return hi


def default_grid(step: float = 0.01, low: float = 0.0) -> list[float]:
    """Thresholds from 1.0 down to ``low`` in ``step`` (most confident first)."""
    count = round((1.0 - low) / step)
    return [round(1.0 - i * step, 10) for i in range(count + 1)]


@dataclass(frozen=True, slots=True)
class Certified:
    """The outcome of :func:`certify_threshold` on one window."""

    # Accept a record when its score is >= threshold; ACCEPT_NOTHING when nothing could be certified.
    threshold: float
    # Audit samples in the window, and how many of them the threshold would accept.
    samples: int
    accepted: int
    # Measured error of the accepted audit samples, and its upper confidence bound (nan: none accepted).
    error: float
    upper: float

    @property
    def certified(self) -> bool:
        """Whether any threshold passed (otherwise every record goes to review)."""
        return self.threshold != ACCEPT_NOTHING

    @property
    def accept_share(self) -> float:
        """Share of the window's records that the threshold accepts (an estimate of 1 - review share)."""
        return self.accepted / self.samples if self.samples else 0.0


def certify_threshold(
    scores: Sequence[float],
    correct: Sequence[bool],
    target_error: float,
    *,
    confidence: float = 0.95,
    min_samples: int = 100,
    grid: Sequence[float] | None = None,
) -> Certified:
    """The lowest grid threshold whose upper bound on accepted-label error is ``<= target_error``.

    ``scores[i]`` is audit sample i's calibrated top mean probability and ``correct[i]`` whether its
    consensus label equals the reviewer's. Scans ``grid`` (default :func:`default_grid`) from the
    highest threshold down, skips thresholds with fewer than ``min_samples`` samples at or above
    them, and stops at the first tested threshold whose bound exceeds the target.
    """
    if not 0.0 < target_error < 1.0:
        raise ValueError(f"target_error must be within (0, 1), got {target_error}")
    if len(scores) != len(correct):
        raise ValueError(f"{len(scores)} scores for {len(correct)} outcomes")
    thresholds = sorted(grid if grid is not None else default_grid(), reverse=True)
    pairs = sorted(zip(scores, correct, strict=True), key=lambda pair: -pair[0])
    best = Certified(ACCEPT_NOTHING, len(pairs), 0, math.nan, math.nan)
    index = errors = 0
    for threshold in thresholds:
        while index < len(pairs) and pairs[index][0] >= threshold:
            errors += not pairs[index][1]
            index += 1
        if index < min_samples:
            continue
        upper = clopper_pearson_upper(errors, index, confidence)
        if upper > target_error:
            break
        best = Certified(threshold, len(pairs), index, errors / index, upper)
    return best


def bound_at(scores: Sequence[float], correct: Sequence[bool], threshold: float,
             confidence: float = 0.95) -> tuple[int, float, float]:
    """Accepted count, measured error and upper bound of the audit samples at one threshold."""
    accepted = [ok for score, ok in zip(scores, correct, strict=True) if score >= threshold]
    n = len(accepted)
    errors = n - sum(accepted)
    return n, (errors / n if n else math.nan), clopper_pearson_upper(errors, n, confidence)
