"""Shared helpers of the reviewer tests (no tests here): hard samples, reading outputs, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable

from autoannotator.config import PipelineConfig
from autoannotator.mockllm import Gold
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import HardSample, Prediction, PredictionStatus, TextRecord, decode

LABELS = ["negative", "neutral", "positive"]


def hard_sample(rid: str, text: str) -> HardSample:
    """A hard record two specialists disagreed on."""
    preds = [
        Prediction(record_id=rid, specialist="s1", model_version="v1", probs=[0.7, 0.2, 0.1], labels=LABELS,
                   status=PredictionStatus.PREDICTION_STATUS_OK),
        Prediction(record_id=rid, specialist="s2", model_version="v3", probs=[0.1, 0.2, 0.7], labels=LABELS,
                   status=PredictionStatus.PREDICTION_STATUS_OK),
    ]
    return HardSample(record_id=rid, record=TextRecord(id=rid, text=text), predictions=preds, uncertainty=0.5,
                      reason="disagreement", labels=LABELS)


def dataset(n: int, prefix: str = "h") -> tuple[dict[str, str], Gold]:
    """``n`` texts keyed by id, and their gold labels."""
    texts = {f"{prefix}{i}": f"hard tweet {prefix}{i} about the flight" for i in range(n)}
    gold = Gold()
    for i, rid in enumerate(texts):
        gold.add(LABELS[i % 3], rid)
    return texts, gold


def hard_items(texts: dict[str, str]) -> list[tuple[str, bytes]]:
    """(key, value) pairs for the ``hard`` topic."""
    return [(rid, hard_sample(rid, text).SerializeToString()) for rid, text in texts.items()]


def read_topic(config: PipelineConfig, bootstrap: str, topic: str, done: Callable[[list], bool],
               timeout_s: float = 60) -> list:
    """Decoded messages of a topic, read until ``done(messages)`` or the timeout."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    with TopicReader(config.kafka, bootstrap, topic) as reader:
        while time.monotonic() < deadline and not done(got):
            got.extend(decode(topic, m)[0] for m in reader.poll(0.3))
    return got


def group(config: PipelineConfig) -> str:
    """A consumer group of the test's own (a shared group id would make tests wait on each other's rebalances)."""
    return f"reviewer-{config.kafka.topic_prefix}"


def committed_offsets(config: PipelineConfig, bootstrap: str,
                      group_id: str | None = None) -> dict[tuple[str, int], int]:
    """A reviewer group's committed offsets on ``hard`` (0 where nothing is committed)."""
    from autoannotator.stream.kafka import make_consumer
    from confluent_kafka import TopicPartition

    consumer = make_consumer(config.kafka, bootstrap, group_id or group(config))
    try:
        parts = [TopicPartition(config.kafka.topic("hard"), p) for p in range(config.kafka.partitions)]
        return {("hard", tp.partition): max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()
