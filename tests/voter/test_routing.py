"""Routing decisions: the paper's vote, calibrated soft averaging, and the record-level rules."""

from __future__ import annotations

import math

import pytest
from autoannotator.errorbound import Certified
from autoannotator.v1.records_pb2 import Prediction, PredictionStatus
from autoannotator.voter.exceptions import VoterConfigError
from autoannotator.voter.routing import Router, soft, temperature_scale, vote

LABELS = ["negative", "neutral", "positive"]
SPECIALISTS = ["s1", "s2", "s3"]
OK = PredictionStatus.PREDICTION_STATUS_OK


def pred(specialist: str, probs: list[float], status: int = OK, reason: str = "", labels: list[str] | None = None
         ) -> Prediction:
    return Prediction(record_id="r1", specialist=specialist, model_version="v1", probs=probs, status=status,
                      reason=reason, labels=labels if labels is not None else LABELS)


def router(**kw: object) -> Router:
    return Router(LABELS, SPECIALISTS, **kw)  # type: ignore[arg-type]


def test_unanimous_vote_has_zero_uncertainty_and_is_accepted() -> None:
    verdict = vote([[0.1, 0.2, 0.7], [0.2, 0.1, 0.7], [0.0, 0.4, 0.6]], k=3, eps=0.1)
    assert verdict.label_index == 2
    assert verdict.uncertainty == 0.0
    assert verdict.accepted
    assert verdict.confidence == pytest.approx((0.7 + 0.7 + 0.6) / 3)


def test_two_of_three_majority_has_uncertainty_one_third() -> None:
    verdict = vote([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], k=3, eps=0.34)
    assert verdict.label_index == 0
    assert verdict.uncertainty == pytest.approx(1 / 3)
    assert verdict.accepted


def test_two_of_three_majority_is_rejected_when_eps_demands_unanimity() -> None:
    verdict = vote([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]], k=3, eps=0.3)
    assert not verdict.accepted


def test_three_way_tie_is_never_accepted_even_with_eps_one() -> None:
    verdict = vote([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], k=3, eps=1.0)
    assert verdict.tie
    assert not verdict.accepted


def test_missing_vote_counts_against_the_majority() -> None:
    # Two of three configured specialists agree; the third is missing: U = 1 - 2/3, not 0.
    verdict = vote([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1]], k=3, eps=0.3)
    assert verdict.uncertainty == pytest.approx(1 / 3)
    assert not verdict.accepted


def test_soft_accepts_at_exactly_tau_and_not_below() -> None:
    probs = [[0.1, 0.1, 0.8], [0.1, 0.2, 0.7], [0.3, 0.0, 0.7]]
    mean_top = (0.8 + 0.7 + 0.7) / 3
    assert soft(probs, [1.0] * 3, tau=mean_top).accepted
    assert not soft(probs, [1.0] * 3, tau=mean_top + 1e-6).accepted
    assert soft(probs, [1.0] * 3, tau=0.5).label_index == 2


def test_soft_tie_at_the_top_is_never_accepted() -> None:
    verdict = soft([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], [1.0, 1.0], tau=0.0)
    assert verdict.tie and not verdict.accepted


def test_temperature_scaling_is_softmax_of_log_probs_over_t() -> None:
    p = [0.2, 0.3, 0.5]
    t = 2.5
    z = [math.log(x) / t for x in p]
    expected = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
    assert temperature_scale(p, t) == pytest.approx(expected)
    # A high temperature flattens the vector, so an otherwise accepted record drops under tau.
    assert soft([p], [1.0], tau=0.45).accepted
    assert not soft([p], [3.0], tau=0.45).accepted


def test_router_names_the_label_from_task_order() -> None:
    decision = router().decide([pred(s, [0.05, 0.9, 0.05]) for s in SPECIALISTS])
    assert decision.outcome == "label"
    assert decision.label == "neutral"


def test_router_reorders_probabilities_named_in_another_label_order() -> None:
    reordered = ["positive", "negative", "neutral"]
    decision = router().decide([pred(s, [0.9, 0.05, 0.05], labels=reordered) for s in SPECIALISTS])
    assert decision.label == "positive"


def test_router_ignores_predictions_over_foreign_labels_as_missing_votes() -> None:
    foreign = pred("s3", [0.9, 0.05, 0.05], labels=["bad", "good", "meh"])
    decision = router(eps=0.3).decide([pred("s1", [0.9, 0.05, 0.05]), pred("s2", [0.9, 0.05, 0.05]), foreign])
    assert decision.outcome == "hard"
    assert decision.reason == "disagreement"
    assert "not the task labels" in decision.detail


def test_bad_input_prediction_rejects_the_record() -> None:
    bad = pred("s2", [], status=PredictionStatus.PREDICTION_STATUS_BAD_INPUT, reason="empty")
    decision = router().decide([pred("s1", [0.9, 0.05, 0.05]), bad])
    assert decision.outcome == "rejected"
    assert decision.reason == "empty"


def test_specialist_errors_below_quorum_route_to_hard() -> None:
    err = PredictionStatus.PREDICTION_STATUS_ERROR
    decision = router(quorum=2).decide(
        [pred("s1", [0.9, 0.05, 0.05]), pred("s2", [], err, "oom"), pred("s3", [], err, "oom")]
    )
    assert decision.outcome == "hard"
    assert decision.reason == "specialist_error"
    assert decision.label == ""


@pytest.mark.parametrize("policy", ["vote", "soft", "error-bounded"])
def test_specialists_without_a_model_send_the_record_to_review_as_cold_start(policy: str) -> None:
    no_model = PredictionStatus.PREDICTION_STATUS_NO_MODEL
    every_cold = [pred(s, [], no_model, "no_model") for s in SPECIALISTS]
    one_served = [pred("s1", [0.9, 0.05, 0.05]), *every_cold[1:]]
    cases = (every_cold, one_served) if policy != "error-bounded" else (every_cold,)
    for predictions in cases:
        decision = router(quorum=2, policy=policy).decide(predictions, record_id="r1")
        assert (decision.outcome, decision.reason, decision.label, decision.audit) == ("hard", "cold_start", "",
                                                                                      True)


def test_error_bounded_routes_with_the_specialists_that_have_a_model_during_cold_start() -> None:
    """The first specialist to get a version labels on its own set's certified threshold; a missing
    (timed-out) prediction still counts against the quorum, only NO_MODEL lowers it."""
    no_model = PredictionStatus.PREDICTION_STATUS_NO_MODEL
    certified = Certified(0.8, 100, 60, 0.02, 0.05)
    seen: list[tuple[tuple[str, str], ...]] = []

    def threshold(versions: tuple[tuple[str, str], ...]) -> Certified:
        seen.append(versions)
        return certified

    one_served = [pred("s1", [0.9, 0.05, 0.05]), pred("s2", [], no_model, "no_model"),
                  pred("s3", [], no_model, "no_model")]
    decision = router(quorum=2, policy="error-bounded", threshold=threshold).decide(one_served, record_id="r1")
    assert (decision.outcome, decision.label, decision.threshold) == ("label", "negative", 0.8)
    assert seen == [(("s1", "v1"),)]
    unsure = [pred("s1", [0.5, 0.3, 0.2]), *one_served[1:]]
    decision = router(quorum=2, policy="error-bounded", threshold=threshold).decide(unsure, record_id="r1")
    assert (decision.outcome, decision.reason) == ("hard", "low_confidence")
    # s2 served but its prediction is missing: quorum 2 still applies (one vote of two is not enough).
    timed_out = [pred("s1", [0.9, 0.05, 0.05]), pred("s3", [], no_model, "no_model")]
    decision = router(quorum=2, policy="error-bounded", threshold=threshold).decide(timed_out, timed_out=True)
    assert (decision.outcome, decision.reason) == ("hard", "cold_start")


def test_one_specialist_error_leaves_a_deciding_quorum() -> None:
    err = PredictionStatus.PREDICTION_STATUS_ERROR
    decision = router(quorum=2, eps=0.34).decide(
        [pred("s1", [0.9, 0.05, 0.05]), pred("s2", [0.8, 0.1, 0.1]), pred("s3", [], err, "oom")]
    )
    assert decision.outcome == "label"
    assert decision.label == "negative"
    assert [p.specialist for p in decision.votes] == ["s1", "s2"]


def test_probabilities_that_do_not_sum_to_one_are_not_votes() -> None:
    decision = router(quorum=3).decide([pred("s1", [0.9, 0.9, 0.9]), pred("s2", [1, 0, 0]), pred("s3", [1, 0, 0])])
    assert decision.outcome == "hard"
    assert "sum to" in decision.detail


def test_nan_or_negative_probabilities_are_not_votes() -> None:
    decision = router(quorum=3).decide(
        [pred("s1", [float("nan"), 0.5, 0.5]), pred("s2", [-0.2, 0.6, 0.6]), pred("s3", [1, 0, 0])]
    )
    assert decision.outcome == "hard"
    assert [p.specialist for p in decision.votes] == ["s3"]
    assert "s1" in decision.detail and "s2" in decision.detail


def test_router_needs_configured_specialists() -> None:
    with pytest.raises(VoterConfigError, match="specialists"):
        Router(LABELS, [])
