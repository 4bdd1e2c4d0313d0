"""Lean predictions: no copy of the text; the voter reads each text once from ``texts`` by its offset."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from autoannotator.config import PipelineConfig
from autoannotator.stream.loop import ServiceLoop
from autoannotator.voter.service import Voter
from autoannotator.voter.texts import TextFetcher
from autoannotator.wire import HardSample, Label, Prediction, PredictionStatus, Rejection, TextRecord, text_sha256

from tests.helpers.kafka import collect, running, send
from tests.helpers.metrics import counter
from tests.voter.test_service import outcomes

pytestmark = pytest.mark.timeout(120)
LABELS = ["negative", "neutral", "positive"]


@pytest.fixture
def config(make_config: Callable[..., PipelineConfig]) -> PipelineConfig:
    return make_config(specialists=[{"name": "s1"}, {"name": "s2"}],
                       voter={"policy": "vote", "audit_rate": 0, "eps": 0.34, "quorum": 2, "join_timeout_s": 5})


def _lean(rid: str, specialist: str, top: int, topic: str, partition: int, offset: int,
          sha256: str = "") -> tuple[str, bytes]:
    probs = [0.1, 0.1, 0.1]
    probs[top] = 0.8
    return rid, Prediction(record_id=rid, specialist=specialist, model_version="v1", probs=probs, labels=LABELS,
                           status=PredictionStatus.PREDICTION_STATUS_OK, source_topic=topic,
                           source_partition=partition, source_offset=offset, text_sha256=sha256).SerializeToString()


def test_labels_and_hard_samples_carry_the_text_read_once_from_texts(config: PipelineConfig,
                                                                      kafka_bootstrap: str) -> None:
    records = {f"l{i}": TextRecord(id=f"l{i}", text=f"text number {i}", meta={"n": str(i)}, created_ms=1000 + i)
               for i in range(12)}
    send(config, kafka_bootstrap, "texts", [(rid, r.SerializeToString()) for rid, r in records.items()])
    where = {m.record_id: (m.partition, m.offset) for m in collect(config, kafka_bootstrap, "texts", len(records))}
    topic = config.kafka.topic("texts")
    predictions = []
    for i, rid in enumerate(records):
        partition, offset = where[rid]
        predictions.append(_lean(rid, "s1", 2, topic, partition, offset))
        predictions.append(_lean(rid, "s2", 2 if i % 2 else 0, topic, partition, offset))  # even: disagree
    # One record whose predictions point past the end of its partition: decided, sent with its id only.
    predictions += [_lean("gone", s, 1, topic, 0, 10_000) for s in ("s1", "s2")]
    missing_before = counter("autoannotator_voter_text_missing_total")
    send(config, kafka_bootstrap, "predictions", predictions)
    texts = TextFetcher(config, kafka_bootstrap, timeout_s=5)
    try:
        with running(ServiceLoop(config, "voter", Voter(config, texts=texts), bootstrap=kafka_bootstrap)):
            seen = outcomes(config, kafka_bootstrap, {*records, "gone"})
    finally:
        texts.close()
    for i, rid in enumerate(records):
        [(topic_name, value)] = seen[rid]
        assert topic_name == ("labels" if i % 2 else "hard")
        message = Label.FromString(value) if topic_name == "labels" else HardSample.FromString(value)
        assert message.record == records[rid]  # the whole TextRecord: text, meta, created_ms
    [(_, value)] = seen["gone"]
    assert Label.FromString(value).record.text == ""
    assert counter("autoannotator_voter_text_missing_total") - missing_before == 1


def test_an_id_reused_with_another_text_is_rejected_with_that_text_read_from_texts(
    config: PipelineConfig, kafka_bootstrap: str,
) -> None:
    first = TextRecord(id="dup", text="the first text", created_ms=1000)
    second = TextRecord(id="dup", text="another text", created_ms=2000)
    send(config, kafka_bootstrap, "texts", [("dup", first.SerializeToString()), ("dup", second.SerializeToString())])
    [at_first, at_second] = [(m.partition, m.offset) for m in collect(config, kafka_bootstrap, "texts", 2)]
    topic = config.kafka.topic("texts")
    # Lean predictions carry only the hash of the text each specialist read, as the specialists stamp it.
    predictions = [_lean("dup", s, 2, topic, *at_first, text_sha256(first.text)) for s in ("s1", "s2")]
    predictions += [_lean("dup", "s1", 0, topic, *at_second, text_sha256(second.text))]
    send(config, kafka_bootstrap, "predictions", predictions)
    texts = TextFetcher(config, kafka_bootstrap, timeout_s=5)
    try:
        with running(ServiceLoop(config, "voter", Voter(config, texts=texts), bootstrap=kafka_bootstrap)):
            seen = outcomes(config, kafka_bootstrap, {"dup"}, settle_s=3.0)
    finally:
        texts.close()
    by_topic = dict(seen["dup"])
    assert sorted(by_topic) == ["labels", "rejected"]
    assert Label.FromString(by_topic["labels"]).record == first
    rejection = Rejection.FromString(by_topic["rejected"])
    assert rejection.reason == "conflicting_duplicate"
    assert rejection.record == second
    assert (rejection.text_sha256, rejection.kept_text_sha256) == (text_sha256(second.text), text_sha256(first.text))
