"""Input formats of the texts topic, and the reasons bad input is refused with."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from autoannotator.exceptions import BadInput
from autoannotator.wire import (
    Label,
    Prediction,
    PredictionStatus,
    RawMessage,
    TextRecord,
    decode,
    decode_text_record,
    encode_text_record,
    votes,
)

REPO = Path(__file__).resolve().parents[1]


def msg(value: bytes | None, key: bytes | None = b"id-1") -> RawMessage:
    return RawMessage(topic="texts", partition=2, offset=7, key=key, value=value, timestamp_ms=1234)


@pytest.mark.parametrize("fmt", ["protobuf", "json", "text"])
def test_each_input_format_round_trips(fmt):
    record = TextRecord(id="id-1", text="Great flight, thanks! ✈️ مرحبا", meta={"source": "airline"})
    decoded = decode_text_record(msg(encode_text_record(record, fmt)), fmt, 65_536)
    assert decoded.id == "id-1"
    assert decoded.text == record.text
    assert decoded.created_ms == 1234
    if fmt != "text":
        assert dict(decoded.meta) == {"source": "airline"}


def test_unkeyed_record_gets_topic_partition_offset_id():
    decoded = decode_text_record(msg(b"hello", key=None), "text", 100)
    assert decoded.id == "texts:2:7"


def test_json_without_key_uses_body_id():
    value = json.dumps({"id": 42, "text": "hi", "meta": {"n": 1}}).encode()
    decoded = decode_text_record(msg(value, key=None), "json", 100)
    assert decoded.id == "42"
    assert decoded.meta["n"] == "1"


def test_key_wins_over_a_disagreeing_body_id():
    value = json.dumps({"id": "other", "text": "hi"}).encode()
    decoded = decode_text_record(msg(value), "json", 100)
    assert decoded.id == "id-1"
    assert decoded.meta["body_id"] == "other"


@pytest.mark.parametrize(
    ("fmt", "value", "reason"),
    [
        ("text", b"\xff\xfe\x00bad", "undecodable"),
        ("json", b"{not json", "undecodable"),
        ("json", b"[1, 2]", "bad_schema"),
        ("json", json.dumps({"id": "x"}).encode(), "bad_schema"),
        ("json", json.dumps({"text": 5}).encode(), "bad_schema"),
        ("json", json.dumps({"text": "x", "meta": [1]}).encode(), "bad_schema"),
        ("protobuf", b"\x0a\xff\xff\xff", "undecodable"),
        ("text", b"", "empty"),
        ("text", b"  \n\t ", "empty"),
        ("protobuf", TextRecord(id="a", text="").SerializeToString(), "empty"),
        ("text", b"x" * 101, "too_large"),
        ("text", b"x" * 10_000, "too_large"),
    ],
)
def test_bad_input_is_refused_with_a_reason(fmt, value, reason):
    with pytest.raises(BadInput) as info:
        decode_text_record(msg(value), fmt, 100)
    assert info.value.reason == reason
    assert info.value.detail


@pytest.mark.parametrize("fmt", ["protobuf", "json", "text"])
@pytest.mark.parametrize("value", [None, b""], ids=["tombstone", "empty_message"])
def test_empty_message_or_tombstone_is_refused_as_empty_in_every_format(fmt, value):
    with pytest.raises(BadInput) as info:
        decode_text_record(msg(value), fmt, 100)
    assert info.value.reason == "empty"
    assert ("tombstone" if value is None else "no bytes") in info.value.detail


def test_decode_rejects_unknown_topic():
    with pytest.raises(ValueError, match="unknown topic"):
        decode("nope", msg(b""))


@pytest.mark.parametrize(
    ("key", "body_id", "expected"),
    [
        (b"k-1", "b-1", "k-1"),  # the key decides the partition: it wins
        (None, "b-1", "b-1"),  # no key: the body's id
        (None, "", "aa.labels:2:7"),  # neither: the full topic name, partition and offset
    ],
)
def test_one_id_rule_for_our_topics(key, body_id, expected):
    value = Label(record_id=body_id, label="positive").SerializeToString()
    raw = RawMessage(topic="labels", partition=2, offset=7, key=key, value=value, timestamp_ms=1,
                     full_topic="aa.labels")
    label, rid = decode("labels", raw)
    assert rid == label.record_id == expected


def test_an_undecodable_message_is_bad_input_that_names_its_id():
    raw = RawMessage(topic="hard", partition=0, offset=3, key=None, value=b"\x0a\xff\xff\xff", timestamp_ms=1,
                     full_topic="aa.hard")
    with pytest.raises(BadInput) as info:
        decode("hard", raw)
    assert (info.value.reason, info.value.record_id) == ("undecodable", "aa.hard:0:3")


def test_votes_are_the_top_task_label_of_each_usable_prediction():
    ok = PredictionStatus.PREDICTION_STATUS_OK
    predictions = [
        Prediction(specialist="s1", model_version="v1", status=ok, probs=[0.1, 0.2, 0.7]),
        # its own label order: re-ordered by name before the vote is read
        Prediction(specialist="s2", model_version="v3", status=ok, probs=[0.6, 0.3, 0.1],
                   labels=["negative", "positive", "neutral"]),
        Prediction(specialist="s3", model_version="v2", status=ok, probs=[0.5, 0.5]),  # unusable: no vote
        Prediction(specialist="s4", model_version="v2", status=PredictionStatus.PREDICTION_STATUS_ERROR),
    ]
    cast, versions = votes(predictions, ["negative", "neutral", "positive"])
    assert [(v.specialist, v.label, round(v.confidence, 3)) for v in cast] == [
        ("s1", "positive", 0.7), ("s2", "negative", 0.6)]
    assert versions == {"s1": "v1", "s2": "v3"}


def test_generated_protobuf_code_is_not_stale(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"), f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", str(REPO / "proto/autoannotator/v1/records.proto")],
        check=True,
    )
    for name in ("records_pb2.py", "records_pb2.pyi"):
        fresh = (tmp_path / "autoannotator/v1" / name).read_text()
        committed = (REPO / "services/autoannotator/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make proto`"
