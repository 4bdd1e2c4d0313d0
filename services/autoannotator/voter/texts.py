"""The voter reads each text once, from ``texts``, by the offset its predictions name (lean predictions).

A lean :class:`~autoannotator.wire.Prediction` carries no copy of its text, only where the text
is: ``source_topic``, ``source_partition``, ``source_offset``. The voter needs the text only for
what it emits (a label or a hard sample), so once per turn :class:`TextFetcher` reads, for each
partition, the range of ``texts`` between the lowest and the highest offset it needs and keeps the
records asked for. Records of one partition are decided roughly in offset order, so the ranges are
dense: every text crosses the broker to the voter once, where it used to cross once per specialist.

Reading by offset, not by joining a second subscription, keeps the voter correct under any
partition assignment: a cooperative-sticky assignor does not co-partition two topics.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, TopicPartition

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.stream.kafka import client_settings
from autoannotator.wire import RawMessage, TextRecord, decode_text_record

log = logging.getLogger(__name__)


class TextFetcher:
    """Reads ``TextRecord``\\ s from ``texts`` by (partition, offset), outside any consumer group."""

    def __init__(self, config: PipelineConfig, bootstrap: str, *, timeout_s: float = 10.0) -> None:
        self._config = config
        self.topic = config.kafka.topic("texts")
        self._timeout_s = timeout_s
        settings = client_settings(config.kafka, bootstrap)
        settings.update({
            "group.id": f"autoannotator-texts-{uuid.uuid4().hex[:12]}",  # never committed to
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if config.kafka.exactly_once else "read_uncommitted",
        })
        self._consumer = Consumer(settings)

    def fetch(self, wanted: dict[tuple[int, int], str]) -> dict[str, TextRecord]:
        """Texts by record id for ``{(partition, offset): record id}``; what cannot be read is left out."""
        if not wanted:
            return {}
        ranges: dict[int, list[int]] = defaultdict(list)
        for partition, offset in wanted:
            ranges[partition].append(offset)
        bounds = {p: (min(offsets), max(offsets)) for p, offsets in ranges.items()}
        self._consumer.assign([TopicPartition(self.topic, p, lo) for p, (lo, _) in bounds.items()])
        found: dict[str, TextRecord] = {}
        open_parts = set(bounds)
        deadline = time.monotonic() + self._timeout_s
        try:
            while open_parts and time.monotonic() < deadline:
                for msg in self._consumer.consume(500, 0.2):
                    err = msg.error()
                    partition = msg.partition()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            open_parts.discard(partition)  # nothing more to read: the rest is gone
                        else:
                            log.warning("reading texts for the voter: %s", err.str())
                        continue
                    offset = msg.offset()
                    if offset >= bounds[partition][1]:
                        open_parts.discard(partition)
                    rid = wanted.get((partition, offset))
                    if rid is None:
                        continue
                    _, ts = msg.timestamp()
                    raw = RawMessage("texts", partition, offset, msg.key(), msg.value(), max(ts, 0),
                                     full_topic=self.topic)
                    try:
                        found[rid] = decode_text_record(raw, self._config.input.format,
                                                        self._config.input.max_text_bytes)
                    except BadInput as exc:  # a specialist said OK on it: it decoded then; keep what can be kept
                        log.warning("text of %s at %s[%d]@%d no longer decodes: %s", rid, self.topic, partition,
                                    offset, exc.detail)
        finally:
            self._consumer.unassign()
        return found

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()
