"""The Specialist service over the embedded broker: one Prediction per record, bad input included."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.loop import ServiceLoop
from autoannotator.wire import Prediction, PredictionStatus, RawMessage, TextRecord, message_text_sha256, text_sha256

from tests.helpers.kafka import collect, running, send, send_texts
from tests.helpers.tiny_model import corpus_texts

OK = PredictionStatus.PREDICTION_STATUS_OK
BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT


@pytest.fixture
def store(tmp_path: Path, tiny_artifact: Path) -> ModelStore:
    """A file store holding the tiny artifact as the current version of specialist ``s1``."""
    store = ModelStore(f"file://{tmp_path / 'store'}")
    version = store.publish("s1", tiny_artifact).version
    store.set_current("s1", version)
    return store


def specialist_config(make_config: Callable[..., PipelineConfig], store: ModelStore, tmp_path: Path,
                      input: dict | None = None, **spec: object) -> PipelineConfig:
    """A pipeline with the one specialist ``s1`` (threads 1, small batches) reading ``store``."""
    return make_config(
        specialists=[{"name": "s1", "threads": 1, "max_batch_size": 8, **spec}],
        store={"uri": store.uri},
        voter={"quorum": 1},
        input=input or {},
        data_dir=str(tmp_path / "data"),
    )


def predictions(config: PipelineConfig, bootstrap: str, count: int) -> dict[str, Prediction]:
    """Read ``count`` predictions; fails on a record predicted twice."""
    got: dict[str, Prediction] = {}
    for msg in collect(config, bootstrap, "predictions", count, timeout_s=60):
        prediction = Prediction.FromString(msg.value)
        assert msg.record_id not in got, f"{msg.record_id} predicted twice"
        assert prediction.record_id == msg.record_id
        got[msg.record_id] = prediction
    return got


def test_every_record_gets_a_prediction_that_matches_the_engine(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, store: ModelStore, tmp_path: Path
) -> None:
    config = specialist_config(make_config, store, tmp_path, max_batch_tokens=128)
    follower = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap)
    engine = follower.load_current()
    texts = {f"r{i}": text for i, text in enumerate(corpus_texts())}
    loop = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", engine), bootstrap=kafka_bootstrap,
                       group_id=group_id("s1"))
    with running(loop):
        send_texts(config, kafka_bootstrap, texts)
        got = predictions(config, kafka_bootstrap, len(texts))
    assert set(got) == set(texts)
    reference = InferenceEngine.from_artifact(store.fetch("s1", "v0001", tmp_path / "ref"), provider="cpu")
    want = reference.predict(list(texts.values()))
    for i, rid in enumerate(texts):
        p = got[rid]
        assert p.status == OK
        assert p.specialist == "s1" and p.model_version == "v0001"
        assert list(p.labels) == config.task.labels
        assert not p.HasField("record")  # lean: the voter reads the text from where the source fields say
        assert p.source_topic == config.kafka.topic("texts") and p.source_offset >= 0
        assert p.latency_ms > 0
        np.testing.assert_allclose(p.probs, want[i], atol=1e-5)


def test_bad_inputs_get_error_predictions_with_reasons_and_raw_bytes(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, store: ModelStore, tmp_path: Path
) -> None:
    config = specialist_config(make_config, store, tmp_path, input={"format": "json", "max_text_bytes": 64})
    engine = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).load_current()
    inputs = {
        "good": json.dumps({"id": "good", "text": "i love this product"}).encode(),
        "not-json": b"\xff{not json",
        "no-text": json.dumps({"id": "no-text", "body": "x"}).encode(),
        "blank": json.dumps({"id": "blank", "text": "   "}).encode(),
        "huge": json.dumps({"id": "huge", "text": "word " * 40}).encode(),
    }
    loop = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", engine), bootstrap=kafka_bootstrap,
                       group_id=group_id("s1"))
    with running(loop):
        send(config, kafka_bootstrap, "texts", inputs.items())
        got = predictions(config, kafka_bootstrap, len(inputs))
    assert set(got) == set(inputs)
    assert got["good"].status == OK
    expected_reason = {"not-json": "undecodable", "no-text": "bad_schema", "blank": "empty", "huge": "too_large"}
    for rid, reason in expected_reason.items():
        p = got[rid]
        assert p.status == BAD_INPUT, rid
        assert p.reason.startswith(reason), p.reason
        assert p.raw == inputs[rid]
        assert not p.probs
        assert p.model_version == "v0001"
    # Every prediction names its message's text hash, as `audit` computes it from the input topic.
    assert got["good"].text_sha256 == text_sha256("i love this product")
    assert got["blank"].text_sha256 == text_sha256("   ")
    assert got["not-json"].text_sha256 == text_sha256(inputs["not-json"])
    for rid, value in inputs.items():
        assert got[rid].text_sha256 == message_text_sha256(RawMessage("texts", 0, 0, rid.encode(), value, 0),
                                                            "json", 64), rid


def test_records_in_a_short_burst_are_not_held_back_by_the_maximum_wait(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, store: ModelStore, tmp_path: Path
) -> None:
    # max_wait_ms is huge: a partial batch is still labelled because the topic was drained.
    config = specialist_config(make_config, store, tmp_path, max_wait_ms=600_000, max_batch_size=64)
    engine = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).load_current()
    loop = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", engine), bootstrap=kafka_bootstrap,
                       group_id=group_id("s1"))
    with running(loop):
        send(config, kafka_bootstrap, "texts",
             [(f"k{i}", TextRecord(id=f"k{i}", text=t).SerializeToString()) for i, t in enumerate(corpus_texts()[:3])])
        assert len(predictions(config, kafka_bootstrap, 3)) == 3


def test_include_text_copies_the_text_into_every_prediction(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, store: ModelStore, tmp_path: Path
) -> None:
    config = specialist_config(make_config, store, tmp_path, include_text=True)
    engine = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).load_current()
    texts = {f"t{i}": text for i, text in enumerate(corpus_texts()[:5])}
    loop = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", engine), bootstrap=kafka_bootstrap,
                       group_id=group_id("s1"))
    with running(loop):
        send_texts(config, kafka_bootstrap, texts)
        got = predictions(config, kafka_bootstrap, len(texts))
    assert {rid: p.record.text for rid, p in got.items()} == texts
