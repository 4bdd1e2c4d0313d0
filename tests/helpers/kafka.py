"""Test helpers around the real broker: run a loop in a thread, send texts, count outcomes."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from autoannotator.config import PipelineConfig
from autoannotator.stream.kafka import make_producer
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import RawMessage, TextRecord


@contextmanager
def running(loop: ServiceLoop) -> Iterator[ServiceLoop]:
    """Run a service loop in a thread for the duration of the block; stop it gracefully after."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            loop.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"loop-{loop.service}", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop()
        thread.join(30)
    if thread.is_alive():
        raise AssertionError(f"service loop {loop.service!r} did not stop within 30 s")
    if errors:
        raise errors[0]


def send(config: PipelineConfig, bootstrap: str, topic: str,
         items: Iterable[tuple[str | None, bytes | None]]) -> int:
    """Produce raw (key, value) pairs to a logical topic and wait for every ack."""
    producer = make_producer(config.kafka, bootstrap)
    count = 0
    for key, value in items:
        producer.produce(config.kafka.topic(topic), value, key=key)
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0
    return count


def send_texts(config: PipelineConfig, bootstrap: str, texts: dict[str, str]) -> int:
    """Produce TextRecords (protobuf) keyed by id."""
    return send(config, bootstrap, "texts",
                ((rid, TextRecord(id=rid, text=text).SerializeToString()) for rid, text in texts.items()))


def collect(config: PipelineConfig, bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[RawMessage]:
    """Read a topic from the beginning until ``count`` messages arrived (or time out)."""
    with TopicReader(config.kafka, bootstrap, topic) as reader:
        return reader.read_until(count, timeout_s)


def wait_for_ids(config: PipelineConfig, bootstrap: str, topic: str, ids: set[str],
                 timeout_s: float = 60) -> Counter[str]:
    """Read a topic until every id in ``ids`` was seen; returns how often each key was seen."""
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    with TopicReader(config.kafka, bootstrap, topic) as reader:
        while time.monotonic() < deadline and not ids <= set(seen):
            for msg in reader.poll(0.3):
                seen[msg.record_id] += 1
        # pick up any stragglers already in the topic
        for msg in reader.drain(3):
            seen[msg.record_id] += 1
    return seen
