"""The Voter processor in memory (no broker): what it writes for odd inputs, with a controlled clock."""

from __future__ import annotations

from collections.abc import Callable

from autoannotator.config import PipelineConfig
from autoannotator.v1.records_pb2 import HardSample, Label, Prediction, PredictionStatus, Rejection, TextRecord
from autoannotator.voter.service import Voter
from autoannotator.wire import RawMessage, text_sha256


class RecordingOutbox:
    """Keeps what the processor sends (the real Outbox needs a producer)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, topic: str, key: str, value: Label | HardSample) -> None:
        self.sent.append((topic, key, value.SerializeToString()))


def message(offset: int, rid: str, value: bytes) -> RawMessage:
    return RawMessage("predictions", 0, offset, rid.encode(), value, 0)


def ok(rid: str, specialist: str, text: str = "t") -> bytes:
    return Prediction(record_id=rid, specialist=specialist, probs=[0.1, 0.1, 0.8], labels=["negative", "neutral",
                      "positive"], status=PredictionStatus.PREDICTION_STATUS_OK,
                      record=TextRecord(id=rid, text=text), text_sha256=text_sha256(text)).SerializeToString()


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


def test_id_reused_with_another_text_rejects_the_second_text_and_keeps_the_first_decision(
    make_config: Callable[..., PipelineConfig],
) -> None:
    voter, _ = voter_with_clock(make_config)
    out = RecordingOutbox()
    # Each specialist reads "a"/first before "a"/second; their predictions interleave.
    voter.handle([message(0, "a", ok("a", "s1", "first")), message(1, "a", ok("a", "s1", "second")),
                  message(2, "a", ok("a", "s2", "first")), message(3, "a", ok("a", "s2", "second")),
                  message(4, "a", ok("a", "s3", "first")), message(5, "a", ok("a", "s3", "second"))],
                 out)  # type: ignore[arg-type]
    [(rejected_topic, key, value), (labels_topic, label_key, label_value)] = out.sent
    assert (rejected_topic, key, labels_topic, label_key) == ("rejected", "a", "labels", "a")
    rejection = Rejection.FromString(value)
    assert rejection.reason == "conflicting_duplicate"
    assert rejection.record.text == "second"
    assert (rejection.text_sha256, rejection.kept_text_sha256) == (text_sha256("second"), text_sha256("first"))
    assert text_sha256("first") in rejection.detail and text_sha256("second") in rejection.detail
    label = Label.FromString(label_value)
    assert label.record.text == "first"
    assert [v.specialist for v in label.votes] == ["s1", "s2", "s3"]


def test_another_text_after_the_decision_is_rejected_once(make_config: Callable[..., PipelineConfig]) -> None:
    voter, _ = voter_with_clock(make_config)
    out = RecordingOutbox()
    voter.handle([message(i, "a", ok("a", s, "first")) for i, s in enumerate(["s1", "s2", "s3"])],
                 out)  # type: ignore[arg-type]
    voter.handle([message(3 + i, "a", ok("a", s, "second")) for i, s in enumerate(["s1", "s2", "s3"])],
                 out)  # type: ignore[arg-type]
    assert [(topic, Rejection.FromString(v).reason if topic == "rejected" else "") for topic, _, v in out.sent] == [
        ("labels", ""), ("rejected", "conflicting_duplicate")]


def test_same_id_with_the_same_text_stays_a_harmless_duplicate(make_config: Callable[..., PipelineConfig]) -> None:
    voter, _ = voter_with_clock(make_config)
    out = RecordingOutbox()
    batch = [message(i, "a", ok("a", s, "same")) for i, s in enumerate(["s1", "s2", "s3"])]
    voter.handle(batch + [message(3 + i, "a", ok("a", s, "same")) for i, s in enumerate(["s1", "s2", "s3"])],
                 out)  # type: ignore[arg-type]
    assert [topic for topic, _, _ in out.sent] == ["labels"]


def test_after_a_restart_the_replayed_memory_still_knows_which_text_owns_an_id(
    make_config: Callable[..., PipelineConfig],
) -> None:
    voter, _ = voter_with_clock(make_config)
    out = RecordingOutbox()
    replayed = [RawMessage("predictions", 0, i, b"a", ok("a", s, text), 0, replay=True)
                for i, (s, text) in enumerate([("s1", "first"), ("s1", "second"), ("s2", "first")])]
    voter.handle([*replayed, message(3, "a", ok("a", "s2", "second")), message(4, "a", ok("a", "s3", "first"))],
                 out)  # type: ignore[arg-type]
    # Both texts were dealt with before the crash: the late ones open no second decision.
    assert out.sent == []
