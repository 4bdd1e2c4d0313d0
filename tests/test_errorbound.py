"""The error-bound math: exact upper bounds, fixed-sequence threshold choice, stable audit choice."""

from __future__ import annotations

import math
import random

import pytest
from autoannotator.errorbound import (
    ACCEPT_NOTHING,
    audit_chosen,
    bound_at,
    certify_threshold,
    clopper_pearson_upper,
)


@pytest.mark.parametrize(
    ("errors", "n", "expected"),
    [
        # Reference values: scipy.stats.beta.ppf(0.95, errors + 1, n - errors), the exact one-sided bound.
        (0, 59, 0.04951),
        (1, 90, 0.05163),
        (10, 1000, 0.01690),
        (5, 20, 0.45558),
    ],
)
def test_the_upper_bound_is_the_exact_clopper_pearson_bound(errors: int, n: int, expected: float) -> None:
    assert clopper_pearson_upper(errors, n, 0.95) == pytest.approx(expected, abs=2e-4)


def test_the_upper_bound_is_one_without_samples_and_grows_with_confidence() -> None:
    assert clopper_pearson_upper(0, 0) == 1.0
    assert clopper_pearson_upper(3, 100, 0.99) > clopper_pearson_upper(3, 100, 0.95) > 3 / 100


def test_the_bound_never_accepts_with_fewer_than_the_minimum_samples() -> None:
    # 29 perfectly right samples at the top: still not enough to certify anything.
    scores = [0.99] * 29 + [0.3] * 200
    correct = [True] * 29 + [False] * 200
    choice = certify_threshold(scores, correct, 0.5, min_samples=30)
    assert choice.threshold == ACCEPT_NOTHING and not choice.certified
    assert choice.accepted == 0


def test_the_threshold_is_the_lowest_that_passes_before_the_first_failure() -> None:
    # 300 right at 0.95, then 100 wrong at 0.6: the bound fails once the wrong ones are accepted.
    scores = [0.95] * 300 + [0.6] * 100
    correct = [True] * 300 + [False] * 100
    choice = certify_threshold(scores, correct, 0.05)
    assert choice.threshold == pytest.approx(0.61)  # lowest grid point above the wrong ones
    assert choice.accepted == 300 and choice.error == 0.0
    assert choice.upper <= 0.05


def test_the_certified_bound_covers_the_true_error_on_simulated_streams() -> None:
    """Over many simulated windows, the true error above the chosen threshold rarely exceeds the target."""
    rng = random.Random(7)
    target, misses, trials = 0.05, 0, 200
    for _ in range(trials):
        scores = [rng.random() ** 0.5 for _ in range(400)]
        correct = [rng.random() < s for s in scores]  # calibrated: P(right) = score
        choice = certify_threshold(scores, correct, target)
        if not choice.certified:
            continue
        # True error of accepted labels for a calibrated score above t: mean of (1 - s) over s >= t.
        grid = [i / 1000 for i in range(1001)]
        above = [1 - s for s in grid if s >= choice.threshold]
        true_error = sum(above) / len(above)
        misses += true_error > target
    assert misses / trials <= 0.10


def test_bound_at_reports_the_window_at_one_threshold() -> None:
    n, error, upper = bound_at([0.9, 0.8, 0.2], [True, False, False], 0.5)
    assert n == 2 and error == 0.5 and upper > 0.5
    n, error, _ = bound_at([0.1], [True], 0.5)
    assert n == 0 and math.isnan(error)


def test_audit_choice_is_stable_and_close_to_the_rate() -> None:
    ids = [f"rec-{i}" for i in range(20_000)]
    first = [audit_chosen(i, 0.03) for i in ids]
    assert first == [audit_chosen(i, 0.03) for i in ids]  # a replay chooses the same records
    assert 0.025 <= sum(first) / len(ids) <= 0.035
    assert not any(audit_chosen(i, 0.0) for i in ids[:100])
    assert all(audit_chosen(i, 1.0) for i in ids[:100])
    # A different salt chooses a different sample (the human audit is independent of the LLM audit).
    assert first != [audit_chosen(i, 0.03, salt="human-audit") for i in ids]


def test_a_target_outside_the_open_unit_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="target_error"):
        certify_threshold([0.5], [True], 0.0)
    with pytest.raises(ValueError, match="target_error"):
        certify_threshold([0.5], [True], 1.0)
