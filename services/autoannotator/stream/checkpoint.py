"""Commit semantics: the whole delivery guarantee lives in :class:`Checkpoint`.

At-least-once (default): outputs are produced, the producer is flushed until the broker has
acknowledged every one, and only then are the consumer offsets committed. A crash anywhere
before the commit re-reads the batch; outputs are keyed by record id and decisions are
deterministic, so the replay yields duplicates, never losses.

Exactly-once (``kafka.exactly_once: true``): the outputs and the offsets go into one Kafka
transaction (``send_offsets_to_transaction``). It needs a real Apache Kafka; the embedded broker
delivers aborted records, so it cannot prove it (ENVIRONMENT.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from autoannotator.exceptions import CheckpointError, DeliveryError

log = logging.getLogger(__name__)

TP = tuple[str, int]
# Given a partition, the lowest offset its processor still needs (None: nothing pending).
HoldFn = Callable[[str, int], int | None]


class Checkpoint:
    """Tracks consumed offsets and commits them once everything they produced is acknowledged."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        *,
        transactional: bool = False,
        flush_timeout_s: float = 60.0,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._transactional = transactional
        self._flush_timeout_s = flush_timeout_s
        self._consumed: dict[TP, int] = {}  # next offset to read, per partition
        self._committed: dict[TP, int] = {}
        self._delivery_errors: list[str] = []
        self._in_transaction = False
        self.produced = 0
        if transactional:
            producer.init_transactions(flush_timeout_s)

    # -- bookkeeping ---------------------------------------------------------------------
    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """Producer delivery callback: remember failures; the next commit refuses to proceed."""
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")

    def begin(self) -> None:
        """Open a transaction if needed, before anything of this checkpoint is produced."""
        if self._transactional and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Note that the message at ``offset`` was handed to the processor."""
        tp = (topic, partition)
        if offset + 1 > self._consumed.get(tp, -1):
            self._consumed[tp] = offset + 1

    def forget(self, partitions: list[TP]) -> None:
        """Drop revoked partitions (their new owner resumes from the last commit)."""
        for tp in partitions:
            self._consumed.pop(tp, None)
            self._committed.pop(tp, None)

    def positions(self, hold: HoldFn | None = None) -> dict[TP, int]:
        """Offsets that may be committed: consumed, but never past the processor's hold."""
        result: dict[TP, int] = {}
        for (topic, partition), nxt in self._consumed.items():
            held = hold(topic, partition) if hold else None
            pos = nxt if held is None else min(nxt, held)
            if pos > self._committed.get((topic, partition), -1):
                result[(topic, partition)] = pos
        return result

    # -- the commit ------------------------------------------------------------------------
    def commit(self, hold: HoldFn | None = None) -> int:
        """Make the consumed progress durable. Returns how many partitions advanced.

        Steps, in order:
        1. flush the producer until every produced message is acknowledged (or fail);
        2. stop if any delivery failed: the offsets stay where they were and the batch is re-read;
        3. compute per partition the offset to commit: consumed, capped by the processor's hold;
        4. commit those offsets synchronously — or, in exactly-once mode, attach them to the
           open transaction (opening one when the batch produced nothing) and commit it.
        """
        positions = self.positions(hold)
        if not self._transactional:
            remaining = self._producer.flush(self._flush_timeout_s)
            if remaining:
                raise DeliveryError(f"{remaining} messages not acknowledged within {self._flush_timeout_s}s")
            self._raise_delivery_errors()
            if positions:
                self._commit_offsets(positions)
        elif positions or self._in_transaction:
            # A batch that produced nothing (the trainer, a voter still joining) opened no
            # transaction; its offsets still need one, or they would be marked committed unsent.
            self.begin()
            try:
                if positions:
                    self._producer.send_offsets_to_transaction(
                        _offsets(positions), self._consumer.consumer_group_metadata(), self._flush_timeout_s
                    )
                self._producer.commit_transaction(self._flush_timeout_s)
            except KafkaException as exc:
                self._abort(exc)
            finally:
                self._in_transaction = False
            self._raise_delivery_errors()
        self._committed.update(positions)
        return len(positions)

    def _commit_offsets(self, positions: dict[TP, int]) -> None:
        try:
            results = self._consumer.commit(offsets=_offsets(positions), asynchronous=False)
        except KafkaException as exc:
            raise CheckpointError(f"offset commit failed: {exc}") from exc
        failed = [f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in results or [] if tp.error]
        if failed:
            raise CheckpointError(f"offset commit failed for {failed}")

    def _abort(self, exc: KafkaException) -> None:
        error = exc.args[0]
        if error.txn_requires_abort():
            self._producer.abort_transaction(self._flush_timeout_s)
        raise CheckpointError(f"transaction commit failed: {exc}") from exc

    def _raise_delivery_errors(self) -> None:
        if self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise DeliveryError(f"{len(errors)} messages failed delivery: {errors[:5]}")


def _offsets(positions: dict[TP, int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition, offset) for (topic, partition), offset in positions.items()]
