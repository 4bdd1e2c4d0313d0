"""The Voter processor in memory (no broker): what it writes for odd inputs, with a controlled clock."""

from __future__ import annotations

from collections.abc import Callable

from autoannotator.config import PipelineConfig
from autoannotator.v1.records_pb2 import HardSample, Label, Prediction, PredictionStatus, TextRecord
from autoannotator.voter.service import Voter
from autoannotator.wire import RawMessage


class RecordingOutbox:
    """Keeps what the processor sends (the real Outbox needs a producer)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, topic: str, key: str, value: Label | HardSample) -> None:
        self.sent.append((topic, key, value.SerializeToString()))


def message(offset: int, rid: str, value: bytes) -> RawMessage:
    return RawMessage("predictions", 0, offset, rid.encode(), value, 0)


def ok(rid: str, specialist: str) -> bytes:
    return Prediction(record_id=rid, specialist=specialist, probs=[0.1, 0.1, 0.8], labels=["negative", "neutral",
                      "positive"], status=PredictionStatus.PREDICTION_STATUS_OK,
                      record=TextRecord(id=rid, text="t")).SerializeToString()


def voter_with_clock(make_config: Callable[..., PipelineConfig]) -> tuple[Voter, list[float]]:
    config = make_config(create=False, specialists=[{"name": "s1"}, {"name": "s2"}, {"name": "s3"}],
                         voter={"policy": "vote", "audit_rate": 0, "join_timeout_s": 5, "quorum": 2})
    now = [100.0]
    return Voter(config, clock=lambda: now[0]), now


def test_undecodable_prediction_is_no_vote_and_the_record_is_decided_on_timeout(
    make_config: Callable[..., PipelineConfig],
) -> None:
    voter, now = voter_with_clock(make_config)
    out = RecordingOutbox()
    voter.handle([message(0, "a", b"\xff\xff\xff"), message(1, "a", ok("a", "s1")), message(2, "a", ok("a", "s2"))],
                 out)  # type: ignore[arg-type]
    voter.tick(out)  # type: ignore[arg-type]
    assert out.sent == [] and voter.hold("predictions", 0) == 0
    now[0] += 5
    voter.tick(out)  # type: ignore[arg-type]
    [(topic, key, value)] = out.sent
    assert (topic, key) == ("labels", "a")
    assert [v.specialist for v in Label.FromString(value).votes] == ["s1", "s2"]
    assert voter.hold("predictions", 0) is None


def test_record_with_only_an_undecodable_prediction_still_ends_in_hard(
    make_config: Callable[..., PipelineConfig],
) -> None:
    voter, now = voter_with_clock(make_config)
    out = RecordingOutbox()
    voter.handle([message(0, "b", b"\xff\xff\xff")], out)  # type: ignore[arg-type]
    now[0] += 6
    voter.tick(out)  # type: ignore[arg-type]
    [(topic, key, value)] = out.sent
    hard = HardSample.FromString(value)
    assert (topic, key, hard.reason) == ("hard", "b", "timeout")
    assert hard.predictions[0].reason == "undecodable_prediction" and hard.predictions[0].raw == b"\xff\xff\xff"


def test_revoked_partition_releases_its_hold_and_pending_records(
    make_config: Callable[..., PipelineConfig],
) -> None:
    voter, _ = voter_with_clock(make_config)
    out = RecordingOutbox()
    voter.handle([message(7, "c", ok("c", "s1"))], out)  # type: ignore[arg-type]
    assert voter.hold("predictions", 0) == 7
    voter.on_revoke([("predictions", 0)])
    assert voter.hold("predictions", 0) is None and voter.join.pending_count == 0
