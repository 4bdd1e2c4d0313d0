"""The per-partition join: completion, holds, timeouts, duplicates, late arrivals, revocation."""

from __future__ import annotations

from autoannotator.v1.records_pb2 import Prediction, PredictionStatus
from autoannotator.voter.join import Arrival, Join

SPECIALISTS = ["s1", "s2", "s3"]


def pred(rid: str, specialist: str, status: int = PredictionStatus.PREDICTION_STATUS_OK) -> Prediction:
    return Prediction(record_id=rid, specialist=specialist, probs=[0.1, 0.2, 0.7], status=status)


def test_record_is_ready_when_all_k_specialists_arrived() -> None:
    join = Join(SPECIALISTS, timeout_s=10)
    assert join.add(0, 0, pred("a", "s1"), 0.0)[0] is Arrival.PENDING
    assert join.add(0, 1, pred("a", "s2"), 0.0)[0] is Arrival.PENDING
    arrival, record = join.add(0, 2, pred("a", "s3"), 0.0)
    assert arrival is Arrival.READY
    assert record is not None and list(record.predictions) == ["s1", "s2", "s3"]
    assert join.pending_count == 0


def test_hold_is_the_first_offset_of_the_oldest_pending_record_per_partition() -> None:
    join = Join(SPECIALISTS, timeout_s=10)
    # Interleaved records: a@0, b@1, a@2, b@3 in partition 0; c@0 in partition 1.
    join.add(0, 0, pred("a", "s1"), 0.0)
    join.add(0, 1, pred("b", "s1"), 0.0)
    join.add(0, 2, pred("a", "s2"), 0.0)
    join.add(0, 3, pred("b", "s2"), 0.0)
    join.add(1, 0, pred("c", "s1"), 0.0)
    assert join.hold(0) == 0
    assert join.hold(1) == 0
    join.add(0, 4, pred("a", "s3"), 0.0)  # a decided: b (first at offset 1) is now the oldest
    assert join.hold(0) == 1
    join.add(0, 5, pred("b", "s3"), 0.0)
    assert join.hold(0) is None
    assert join.hold(1) == 0
    assert join.hold(7) is None


def test_expired_returns_records_waiting_longer_than_the_timeout_in_order() -> None:
    join = Join(SPECIALISTS, timeout_s=5)
    join.add(0, 0, pred("a", "s1"), 0.0)
    join.add(0, 1, pred("b", "s1"), 3.0)
    join.add(1, 0, pred("c", "s1"), 1.0)
    assert join.expired(4.9) == []
    assert sorted(r.record_id for r in join.expired(6.0)) == ["a", "c"]
    assert join.hold(0) == 1
    assert [r.record_id for r in join.expired(8.0)] == ["b"]
    assert join.pending_count == 0


def test_duplicate_prediction_for_a_pending_record_is_ignored() -> None:
    join = Join(SPECIALISTS, timeout_s=10)
    join.add(0, 0, pred("a", "s1"), 0.0)
    assert join.add(0, 1, pred("a", "s1"), 0.0)[0] is Arrival.DUPLICATE
    _, record = join.add(0, 2, pred("a", "s2"), 0.0)
    assert record is not None and len(record.predictions) == 2


def test_predictions_for_a_decided_record_are_late_or_duplicate() -> None:
    join = Join(SPECIALISTS, timeout_s=5)
    join.add(0, 0, pred("a", "s1"), 0.0)
    join.add(0, 1, pred("a", "s2"), 0.0)
    (record,) = join.expired(10.0)
    join.decided(record)
    assert join.add(0, 2, pred("a", "s3"), 11.0)[0] is Arrival.LATE
    assert join.add(0, 3, pred("a", "s1"), 11.0)[0] is Arrival.DUPLICATE
    assert join.pending_count == 0
    assert join.hold(0) is None


def test_decided_memory_is_bounded_per_partition() -> None:
    join = Join(["s1"], timeout_s=5, remember_decided=2)
    for i, rid in enumerate(["a", "b", "c"]):
        _, record = join.add(0, i, pred(rid, "s1"), 0.0)
        join.decided(record)
    assert join.add(0, 3, pred("c", "s1"), 0.0)[0] is Arrival.DUPLICATE
    # "a" was forgotten: its repeat opens a fresh record instead of being recognised.
    assert join.add(0, 4, pred("a", "s1"), 0.0)[0] is Arrival.READY


def test_bad_input_completes_a_record_at_once() -> None:
    join = Join(SPECIALISTS, timeout_s=10)
    arrival, _ = join.add(0, 0, pred("a", "s1", PredictionStatus.PREDICTION_STATUS_BAD_INPUT), 0.0)
    assert arrival is Arrival.READY


def test_unknown_specialist_is_kept_as_a_stray_so_the_record_still_times_out() -> None:
    join = Join(SPECIALISTS, timeout_s=1)
    assert join.add(0, 0, pred("a", "intruder"), 0.0)[0] is Arrival.STRAY
    assert join.hold(0) == 0
    (record,) = join.expired(2.0)
    assert record.predictions == {} and [p.specialist for p in record.strays] == ["intruder"]


def test_revoke_drops_only_that_partitions_pending_records() -> None:
    join = Join(SPECIALISTS, timeout_s=10)
    join.add(0, 0, pred("a", "s1"), 0.0)
    join.add(1, 0, pred("b", "s1"), 0.0)
    assert join.drop([0]) == 1
    assert join.hold(0) is None and join.hold(1) == 0
    assert join.pending_count == 1


def test_remembered_records_ignore_their_late_and_duplicate_predictions() -> None:
    join = Join(SPECIALISTS, timeout_s=10, remember_decided=2)
    join.remember(0, "r1", "s1")
    assert join.add(0, 5, pred("r1", "s1"), 0.0)[0] is Arrival.DUPLICATE
    assert join.add(0, 6, pred("r1", "s2"), 0.0)[0] is Arrival.LATE
    assert join.pending_count == 0
    join.remember(0, "r2", "s1")
    join.remember(0, "r3", "s1")  # the memory is bounded: r1 is forgotten
    assert join.add(0, 7, pred("r1", "s1"), 0.0)[0] is Arrival.PENDING


def test_the_timeout_counts_from_the_first_predictions_own_timestamp() -> None:
    join = Join(SPECIALISTS, timeout_s=5)
    join.add(0, 0, pred("a", "s1"), 0.0, seen_ms=100_000)  # produced at t=100 s, read at voter time 0
    assert join.expired(4.9) == []
    assert [r.record_id for r in join.expired(5.0)] == ["a"]  # caught up: the event clock runs with the voter's


def test_a_voter_reading_a_backlog_slowly_times_nothing_out_early() -> None:
    join = Join(["s1", "s2"], timeout_s=5)
    join.add(0, 0, pred("a", "s1"), 0.0, seen_ms=100_000)
    # The voter is slow: ten seconds later it has only read up to predictions stamped t=102 s.
    assert join.advance(0, 102_000, 10.0) == []
    join.add(0, 1, pred("b", "s1"), 10.0, seen_ms=102_000)
    assert join.expired(10.0) == []  # an arrival clock would have timed a out at voter time 5
    arrival, record = join.add(0, 2, pred("a", "s2"), 10.1, seen_ms=104_000)  # 4 s after a's first: in time
    assert arrival is Arrival.READY and set(record.predictions) == {"s1", "s2"}


def test_a_prediction_stamped_after_the_deadline_is_late_whatever_batch_it_is_read_in() -> None:
    join = Join(["s1", "s2"], timeout_s=5)
    join.add(0, 0, pred("a", "s1"), 0.0, seen_ms=100_000)
    join.add(0, 1, pred("b", "s1"), 0.0, seen_ms=103_000)
    (expired,) = join.advance(0, 105_500, 0.0)  # read at once, but stamped after a's deadline (t=105 s)
    assert expired.record_id == "a"
    join.decided(expired)
    assert join.add(0, 2, pred("a", "s2"), 0.0, seen_ms=105_500)[0] is Arrival.LATE
    assert join.add(0, 3, pred("b", "s2"), 0.0, seen_ms=105_600)[0] is Arrival.READY  # b's deadline is t=108 s
