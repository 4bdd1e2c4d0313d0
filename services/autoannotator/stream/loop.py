"""The one consume–process–produce loop that every service runs.

A service is a :class:`Processor`: it gets batches of :class:`~autoannotator.wire.RawMessage`
and writes its outputs through an :class:`Outbox`. :class:`ServiceLoop` owns the consumer, the
producer, the :class:`~.checkpoint.Checkpoint`, rebalances, pausing, the health/metrics endpoint
and graceful shutdown (SIGTERM/SIGINT: finish the batch, flush, commit, leave the group).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterable, Sequence

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf.message import Message as ProtoMessage
from prometheus_client import Counter, Gauge, Histogram

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BrokerError
from autoannotator.metrics import MetricsServer
from autoannotator.stream.checkpoint import Checkpoint
from autoannotator.stream.kafka import ensure_topics, make_consumer, make_producer
from autoannotator.wire import RawMessage, encode

log = logging.getLogger(__name__)

RECORDS_IN = Counter("autoannotator_records_in_total", "Messages consumed", ["service", "topic"])
RECORDS_OUT = Counter("autoannotator_records_out_total", "Messages produced", ["service", "topic"])
COMMITS = Counter("autoannotator_commits_total", "Checkpoint commits", ["service", "result"])
BATCH_SECONDS = Histogram(
    "autoannotator_batch_seconds",
    "Time to process one consumed batch (handle + flush + commit)",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "autoannotator_consumer_lag", "Messages behind the partition's high watermark", ["service", "topic", "partition"]
)
PAUSED = Gauge("autoannotator_consumer_paused", "1 while the service holds consumption paused", ["service"])


class Outbox:
    """Where a processor writes its outputs; keys are record ids, values protobuf or bytes.

    A protobuf value is encoded by :func:`~autoannotator.wire.encode`: JSON on ``labels`` and
    ``rejected`` when ``output.format`` is ``json``.
    """

    def __init__(self, producer: Producer, checkpoint: Checkpoint, config: PipelineConfig, service: str) -> None:
        self._producer = producer
        self._checkpoint = checkpoint
        self._config = config
        self._service = service
        self._output_format = config.output.format
        # Per logical topic: the full name and the bound counter (no per-message lookups on the hot path).
        self._targets: dict[str, tuple[str, Counter]] = {}

    def send(self, topic: str, key: str | bytes | None, value: ProtoMessage | bytes) -> None:
        """Produce to a logical topic (``labels``, ``hard``, ...). Acknowledged before the next commit."""
        payload = value if isinstance(value, bytes) else encode(value, topic=topic, output_format=self._output_format)
        target = self._targets.get(topic)
        if target is None:
            target = self._targets[topic] = (self._config.kafka.topic(topic), RECORDS_OUT.labels(self._service, topic))
        full, counter = target
        self._checkpoint.begin()
        while True:
            try:
                self._producer.produce(full, payload, key=key, on_delivery=self._checkpoint.on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room (back-pressure).
                self._producer.poll(0.1)
        self._checkpoint.produced += 1
        counter.inc()

    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""
        self._producer.poll(0)


class Processor:
    """A service's logic. Override :meth:`handle`; the other hooks are optional."""

    #: Logical topics this processor consumes.
    topics: Sequence[str] = ()
    #: On assignment, re-read up to this many messages below each partition's committed offset and
    #: hand them over with ``replay=True`` (already handled; only to rebuild in-memory state, such as
    #: the voter's memory of decided records). They are never committed again.
    replay_window: int = 0

    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        """Process one consumed batch, writing outputs to ``out``."""
        raise NotImplementedError

    def tick(self, out: Outbox) -> None:
        """Called on every loop turn, with or without messages (timers, background results)."""

    def hold(self, topic: str, partition: int) -> int | None:
        """Lowest offset of this partition still needed (not yet decided); None when none is."""
        return None

    def on_assign(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions newly assigned to this instance."""

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Partitions taken away: drop their in-memory state (the new owner re-reads it)."""

    def ready(self) -> bool:
        """Whether the service can do its work (model loaded, ...); drives ``/readyz``."""
        return True

    def wants_pause(self) -> bool:
        """Whether consumption should be paused now (e.g. budget reached); asked after every turn.

        What was consumed stays uncommitted as :meth:`hold` says; the loop resumes fetching as soon
        as this turns false.
        """
        return False

    def on_committed(self) -> None:
        """Called after a commit succeeded: everything produced before it is acknowledged by the broker.

        The place to acknowledge outputs to a system outside Kafka (a durable queue), never earlier.
        """

    def close(self, out: Outbox) -> None:
        """Last call before the final commit on shutdown."""


class ServiceLoop:
    """Runs one :class:`Processor` against Kafka with checkpointed, at-least-once delivery."""

    def __init__(
        self,
        config: PipelineConfig,
        service: str,
        processor: Processor,
        *,
        bootstrap: str,
        group_id: str | None = None,
        instance_id: str = "0",
        metrics_port: int | None = None,
        create_topics: bool = True,
        metrics: MetricsServer | None = None,
    ) -> None:
        self.config = config
        self.service = service
        self.processor = processor
        self.bootstrap = bootstrap
        self.group_id = group_id or config.kafka.group(service)
        self._stop = threading.Event()
        self._paused = False
        self._assigned: set[tuple[str, int]] = set()
        # Per (full topic, partition): offsets below this are replays (see Processor.replay_window).
        self._replay_until: dict[tuple[str, int], int] = {}
        self._last_turn = time.monotonic()
        self._topic_names = {config.kafka.topic(t): t for t in processor.topics}
        if create_topics:
            ensure_topics(config.kafka, bootstrap)
        kafka = config.kafka
        self._consumer: Consumer = make_consumer(
            kafka, bootstrap, self.group_id, **{"statistics.interval.ms": 5000, "stats_cb": self._on_stats}
        )
        txn_id = f"{self.group_id}-{instance_id}" if kafka.exactly_once else None
        self._producer: Producer = make_producer(kafka, bootstrap, txn_id)
        self.checkpoint = Checkpoint(self._consumer, self._producer, transactional=kafka.exactly_once)
        self.outbox = Outbox(self._producer, self.checkpoint, config, service)
        if metrics is None:
            metrics = MetricsServer(config.metrics.host, config.metrics.port if metrics_port is None else metrics_port)
        # A server started early (before a model load, runtime.start_probes) answers for this loop from now on.
        metrics.bind(health=self.healthy, ready=self.ready)
        self.metrics = metrics

    # -- control ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch, commit and leave (thread- and signal-safe)."""
        self._stop.set()

    def pause(self) -> None:
        """Stop fetching new messages (e.g. budget reached); what was consumed stays uncommitted."""
        if not self._paused and self._assigned:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._assigned])
        self._paused = True
        PAUSED.labels(self.service).set(1)

    def resume(self) -> None:
        """Fetch again after :meth:`pause`."""
        if self._paused and self._assigned:
            self._consumer.resume([TopicPartition(t, p) for t, p in self._assigned])
        self._paused = False
        PAUSED.labels(self.service).set(0)

    @property
    def paused(self) -> bool:
        """Whether consumption is paused."""
        return self._paused

    def healthy(self) -> bool:
        """Alive: the loop turned recently."""
        return time.monotonic() - self._last_turn < max(60.0, self.config.kafka.max_poll_interval_ms / 1000)

    def ready(self) -> bool:
        """Ready: alive, and the processor says it can work."""
        return self.healthy() and self.processor.ready()

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        """Consume, process, produce and commit until :meth:`stop` (or a signal)."""
        self.metrics.start()
        log.info(
            "%s: consuming %s as group %s; metrics on %s",
            self.service, sorted(self._topic_names), self.group_id, self.metrics.url,
        )
        self._consumer.subscribe(list(self._topic_names), on_assign=self._on_assign, on_revoke=self._on_revoke)
        kafka = self.config.kafka
        try:
            while not self._stop.is_set():
                self._last_turn = time.monotonic()
                messages = self._consumer.consume(kafka.consume_batch, kafka.consume_timeout_s)
                started = time.perf_counter()
                batch = self._accept(messages)
                if batch:
                    self.processor.handle(batch, self.outbox)
                self.processor.tick(self.outbox)
                if self.processor.wants_pause() != self._paused:
                    (self.pause if not self._paused else self.resume)()
                if batch or self.checkpoint.produced:
                    self._commit()
                    BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - started)
                else:
                    self.outbox.poll()
            self.processor.close(self.outbox)
            self._commit()
        finally:
            self._close()

    def _accept(self, messages: Iterable[Message]) -> list[RawMessage]:
        batch: list[RawMessage] = []
        consumed = self.checkpoint.consumed
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise BrokerError(f"fatal consumer error: {err.str()}")
                log.warning("%s: consumer error: %s", self.service, err.str())
                continue
            topic = self._topic_names.get(msg.topic(), msg.topic())
            partition, offset = msg.partition(), msg.offset()
            replay = bool(self._replay_until) and offset < self._replay_until.get((msg.topic(), partition), -1)
            if not replay:
                consumed(msg.topic(), partition, offset)
            _, ts = msg.timestamp()
            batch.append(RawMessage(topic, partition, offset, msg.key(), msg.value(), ts if ts > 0 else 0, replay,
                                    msg.topic(), tuple(msg.headers() or ())))
        if batch:
            # Counted per batch and topic, not per message: label lookups are not free on the hot path.
            for topic, count in collections.Counter(m.topic for m in batch).items():
                RECORDS_IN.labels(self.service, topic).inc(count)
        return batch

    def _hold(self, full_topic: str, partition: int) -> int | None:
        return self.processor.hold(self._topic_names.get(full_topic, full_topic), partition)

    def _commit(self) -> None:
        try:
            self.checkpoint.commit(self._hold)
        except Exception:
            COMMITS.labels(self.service, "error").inc()
            raise
        self.checkpoint.produced = 0
        COMMITS.labels(self.service, "ok").inc()
        self.processor.on_committed()

    def _logical(self, partitions: list[TopicPartition]) -> list[tuple[str, int]]:
        return [(self._topic_names.get(tp.topic, tp.topic), tp.partition) for tp in partitions]

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        window = self.processor.replay_window
        if window > 0 and partitions:
            # Start a little below the committed offset; what lies below it is handed over as replay.
            committed = consumer.committed(partitions, timeout=30)
            for tp in committed:
                if tp.offset > 0:
                    self._replay_until[(tp.topic, tp.partition)] = tp.offset
                    tp.offset = max(0, tp.offset - window)
            if self.config.kafka.assignment_strategy == "cooperative-sticky":
                consumer.incremental_assign(committed)  # only the added partitions; the others keep flowing
            else:
                consumer.assign(committed)
        if self._paused and partitions:
            consumer.pause(partitions)
        log.info("%s: assigned %s", self.service, [(tp.topic, tp.partition) for tp in partitions])
        self.processor.on_assign(self._logical(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what is safe while we still own the partitions, then forget them.
        try:
            self._commit()
        except Exception:  # the new owner re-reads from the last commit: duplicates, not losses
            log.exception("%s: commit on revoke failed", self.service)
        revoked = [(tp.topic, tp.partition) for tp in partitions]
        self.processor.on_revoke(self._logical(partitions))
        self.checkpoint.forget(revoked)
        self._assigned.difference_update(revoked)
        for tp in revoked:
            self._replay_until.pop(tp, None)
            self._forget_lag(*tp)
        log.info("%s: revoked %s", self.service, revoked)

    def _on_stats(self, stats_json: str) -> None:
        # librdkafka computes lag from fetch responses' high watermarks, not ListOffsets.
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        for topic, tstats in stats.get("topics", {}).items():
            logical = self._topic_names.get(topic, topic)
            for pid, pstats in tstats.get("partitions", {}).items():
                lag = pstats.get("consumer_lag", -1)
                # Only owned partitions: the statistics may still list one revoked a moment ago.
                if pid != "-1" and lag is not None and lag >= 0 and (topic, int(pid)) in self._assigned:
                    CONSUMER_LAG.labels(self.service, logical, pid).set(lag)

    def _forget_lag(self, topic: str, partition: int) -> None:
        """Remove a revoked partition's lag series: its new owner reports it (no stale max in the rules)."""
        with contextlib.suppress(KeyError):  # KeyError: never reported
            CONSUMER_LAG.remove(self.service, self._topic_names.get(topic, topic), str(partition))

    def _close(self) -> None:
        try:
            self._producer.flush(10)
        finally:
            self._consumer.close()  # leaves the group so partitions move at once
            self.metrics.stop()
            log.info("%s: stopped", self.service)


def run_service(loop: ServiceLoop) -> None:
    """Run a loop in the foreground with SIGTERM/SIGINT mapped to a graceful stop."""

    def _graceful(signum: int, _frame: object) -> None:
        log.info("%s: received %s, finishing the batch", loop.service, signal.Signals(signum).name)
        loop.stop()

    previous = {sig: signal.signal(sig, _graceful) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        loop.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["KafkaException", "Outbox", "Processor", "ServiceLoop", "run_service"]
