"""Formats a Kafka user expects: a per-message content-type header on input, JSON on the output topics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.exceptions import BadInput, ConfigError
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.kafka import make_producer, producer_settings
from autoannotator.stream.loop import ServiceLoop
from autoannotator.voter.service import Voter
from autoannotator.wire import (
    Label,
    Prediction,
    PredictionStatus,
    RawMessage,
    Rejection,
    TextRecord,
    decode,
    decode_text_record,
    encode,
)

from tests.helpers.kafka import collect, running, send

OK = PredictionStatus.PREDICTION_STATUS_OK
BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT


def texts_message(value: bytes, content_type: str | None) -> RawMessage:
    headers = (("content-type", content_type.encode()),) if content_type is not None else ()
    return RawMessage("texts", 0, 7, b"r1", value, 0, headers=headers)


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        (json.dumps({"id": "r1", "text": "hello there"}).encode(), "application/json"),
        (json.dumps({"id": "r1", "text": "hello there"}).encode(), "Application/JSON; charset=utf-8"),
        (b"hello there", "text/plain"),
        (TextRecord(id="r1", text="hello there").SerializeToString(), "application/x-protobuf"),
        (TextRecord(id="r1", text="hello there").SerializeToString(), None),
    ],
)
def test_content_type_header_chooses_the_format_over_a_protobuf_default(value: bytes, content_type: str | None) -> None:
    record = decode_text_record(texts_message(value, content_type), "protobuf", 1000)
    assert (record.id, record.text) == ("r1", "hello there")


def test_an_unsupported_content_type_is_bad_input_naming_the_header() -> None:
    with pytest.raises(BadInput) as caught:
        decode_text_record(texts_message(b"<a>hi</a>", "application/xml"), "json", 1000)
    assert caught.value.reason == "undecodable" and "application/xml" in caught.value.detail


def test_json_record_with_a_content_type_header_is_labelled_by_a_specialist_under_protobuf_default(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tmp_path: Path, tiny_artifact: Path
) -> None:
    store = ModelStore(f"file://{tmp_path / 'store'}")
    store.set_current("s1", store.publish("s1", tiny_artifact).version)
    # include_text: predictions are lean by default; here they carry the text the specialist decoded.
    config = make_config(specialists=[{"name": "s1", "threads": 1, "include_text": True}], store={"uri": store.uri},
                         voter={"quorum": 1}, data_dir=str(tmp_path / "data"))
    assert config.input.format == "protobuf"
    producer = make_producer(config.kafka, kafka_bootstrap)
    topic = config.kafka.topic("texts")
    producer.produce(topic, json.dumps({"id": "j", "text": "i love this"}).encode(), key="j",
                     headers=[("content-type", b"application/json")])
    producer.produce(topic, b"the store opens at nine", key="t", headers=[("content-type", b"text/plain")])
    producer.produce(topic, json.dumps({"id": "n", "text": "no header"}).encode(), key="n")
    assert producer.flush(30) == 0
    engine = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).load_current()
    loop = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", engine), bootstrap=kafka_bootstrap,
                       group_id=group_id("s1"))
    with running(loop):
        got = {rid: pred for pred, rid in (decode("predictions", m)
                                           for m in collect(config, kafka_bootstrap, "predictions", 3))}
    assert got["j"].status == OK and got["j"].record.text == "i love this"
    assert got["t"].status == OK and got["t"].record.text == "the store opens at nine"
    # Without a header the config's default (protobuf) applies, and JSON bytes are not a TextRecord.
    assert got["n"].status == BAD_INPUT


def test_labels_and_rejections_under_output_format_json_read_with_json_loads_alone(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str
) -> None:
    config = make_config(specialists=[{"name": "s1"}, {"name": "s2"}], output={"format": "json"},
                         voter={"quorum": 2, "policy": "soft", "tau": 0.5, "audit_rate": 0.0})
    labels = config.task.labels

    def prediction(rid: str, specialist: str, status: int = OK) -> tuple[str, bytes]:
        probs = [0.0] * len(labels)
        probs[0] = 1.0
        return rid, Prediction(record_id=rid, specialist=specialist, model_version="v0001", status=status,
                               reason="" if status == OK else "empty", labels=labels,
                               probs=probs if status == OK else [],
                               record=TextRecord(id=rid, text=f"text {rid}")).SerializeToString()

    send(config, kafka_bootstrap, "predictions",
         [prediction("good", "s1"), prediction("good", "s2"), prediction("bad", "s1", BAD_INPUT),
          prediction("bad", "s2", BAD_INPUT)])
    with running(ServiceLoop(config, "voter", Voter(config), bootstrap=kafka_bootstrap)):
        [label_msg] = collect(config, kafka_bootstrap, "labels", 1)
        [rejected_msg] = collect(config, kafka_bootstrap, "rejected", 1)
    label = json.loads(label_msg.value)
    assert label["record_id"] == "good" and label["label"] == labels[0]
    assert label["source"] == "LABEL_SOURCE_CONSENSUS"
    rejection = json.loads(rejected_msg.value)
    assert rejection["reason"] == "empty"
    # The project's own readers (audit, tail) take either encoding.
    assert decode("labels", label_msg)[0].label == labels[0]


def test_encode_keeps_protobuf_for_internal_topics_and_by_default() -> None:
    label = Label(record_id="r1", label="a", confidence=0.9)
    assert encode(label) == label.SerializeToString()
    assert encode(label, topic="labels") == label.SerializeToString()
    assert encode(label, topic="hard", output_format="json") == label.SerializeToString()
    rejection_bytes = encode(Rejection(reason="empty"), topic="rejected", output_format="protobuf")
    assert Rejection.FromString(rejection_bytes).reason == "empty"
    as_json = encode(label, topic="labels", output_format="json")
    assert json.loads(as_json)["label"] == "a"
    assert decode("labels", RawMessage("labels", 0, 0, b"r1", as_json, 0)) == (label, "r1")


def test_producer_compression_is_configurable_and_kafka_extra_still_wins() -> None:
    def compression(kafka: dict) -> object:
        config = parse_config({"task": {"labels": ["a", "b"]}, "kafka": kafka})
        return producer_settings(config.kafka, "127.0.0.1:9092")["compression.type"]

    assert compression({}) == "lz4"
    assert compression({"compression": "zstd"}) == "zstd"
    assert compression({"compression": "none", "extra": {"compression.type": "gzip"}}) == "gzip"
    with pytest.raises(ConfigError, match=r"kafka\.compression"):
        parse_config({"task": {"labels": ["a", "b"]}, "kafka": {"compression": "brotli"}})
