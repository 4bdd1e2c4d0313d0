"""Reading a topic outside any consumer group: ``tail``, ``audit``, ``annotate`` and followers.

A :class:`TopicReader` assigns itself every partition of one topic (from the beginning or the
end), never commits, and so sees every message — what a specialist needs to follow the
broadcast ``model-releases`` topic, where each replica must see each release.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from autoannotator.config import KafkaConfig
from autoannotator.exceptions import BrokerError
from autoannotator.stream.kafka import client_settings
from autoannotator.wire import RawMessage


class TopicReader:
    """Reads every partition of one topic without a group; a context manager."""

    def __init__(self, kafka: KafkaConfig, bootstrap: str, logical_topic: str, *, from_beginning: bool = True) -> None:
        self.logical_topic = logical_topic
        self.topic = kafka.topic(logical_topic)
        settings = client_settings(kafka, bootstrap)
        settings.update(
            {
                # A throwaway group id: librdkafka wants one, nothing is ever committed to it. It
                # carries the install's prefix like every group, so the prefixed group ACL covers it.
                "group.id": kafka.group(f"reader-{uuid.uuid4().hex[:12]}"),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed" if kafka.exactly_once else "read_uncommitted",
            }
        )
        self._consumer = Consumer(settings)
        meta = self._consumer.list_topics(self.topic, timeout=10)
        tmeta = meta.topics.get(self.topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            self._consumer.close()
            raise BrokerError(f"topic {self.topic} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self.partitions = sorted(tmeta.partitions)
        self._consumer.assign([TopicPartition(self.topic, p, start) for p in self.partitions])
        self._eof: set[int] = set()

    def poll(self, timeout_s: float = 0.2, max_messages: int = 500) -> list[RawMessage]:
        """Whatever arrived within ``timeout_s`` (possibly nothing)."""
        out: list[RawMessage] = []
        for msg in self._consumer.consume(max_messages, timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof.add(msg.partition())
                    continue
                raise BrokerError(f"reading {self.topic}: {err.str()}")
            self._eof.discard(msg.partition())
            _, ts = msg.timestamp()
            out.append(
                RawMessage(self.logical_topic, msg.partition(), msg.offset(), msg.key(), msg.value(), max(ts, 0),
                           full_topic=msg.topic(), headers=tuple(msg.headers() or ()))
            )
        return out

    @property
    def at_end(self) -> bool:
        """True when every partition has reported end-of-partition since its last message."""
        return len(self._eof) == len(self.partitions)

    def read_until(self, count: int, timeout_s: float) -> list[RawMessage]:
        """Read until ``count`` messages arrived or ``timeout_s`` passed; returns what arrived."""
        deadline = time.monotonic() + timeout_s
        got: list[RawMessage] = []
        while len(got) < count and time.monotonic() < deadline:
            got.extend(self.poll(0.2))
        return got

    def drain(self, timeout_s: float = 10.0) -> list[RawMessage]:
        """Read everything currently in the topic (until every partition is at its end)."""
        deadline = time.monotonic() + timeout_s
        got: list[RawMessage] = []
        while time.monotonic() < deadline:
            got.extend(self.poll(0.2))
            if self.at_end:
                break
        return got

    def __iter__(self) -> Iterator[RawMessage]:
        while True:
            yield from self.poll(0.5)

    def close(self) -> None:
        """Close the consumer (nothing to commit)."""
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
