"""The ``Specialist`` processor: ``texts`` in, one ``Prediction`` per record out.

Per consumed batch: decode every message (bad input becomes a BAD_INPUT prediction at once,
never dropped), tokenize the good ones in one call, queue them in the token-budget batcher, and
run the batches that are ready. Records still waiting for company hold back the commit of their
partition (:meth:`Specialist.hold`), so a crash re-reads them rather than losing them. A new
model version from :mod:`.reload` is swapped in only between batches, after the queue has been
run with the old one: every record is labelled by exactly one complete model, which the
prediction names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Encoding

from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.exceptions import InferenceError
from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.specialist.batcher import TokenBudgetBatcher
from autoannotator.specialist.exceptions import SpecialistError
from autoannotator.specialist.metrics import ERRORS, INFERENCE_SECONDS, MODEL_VERSION, PREDICTIONS
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.stream.loop import Outbox, Processor
from autoannotator.wire import Prediction, PredictionStatus, RawMessage, TextRecord, decode, now_ms

log = logging.getLogger(__name__)

OUTPUT_TOPIC = "predictions"
#: Bytes of an undecodable or oversized input kept in its Prediction (and so in its Rejection).
RAW_KEEP_BYTES = 64 * 1024


@dataclass(slots=True)
class Pending:
    """A decoded, tokenized record waiting for its batch."""

    msg: RawMessage
    record: TextRecord
    encoding: Encoding
    received: float


def group_id(name: str) -> str:
    """The consumer group of a specialist: each specialist sees every record once."""
    return f"autoannotator-specialist-{name}"


class Specialist(Processor):
    """Labels every record of ``texts`` with one model and emits a ``Prediction`` for each."""

    topics = ("texts",)

    def __init__(
        self,
        config: PipelineConfig,
        name: str,
        engine: InferenceEngine,
        *,
        follower: ReleaseFollower | None = None,
    ) -> None:
        self.config = config
        self.name = name
        spec = config.specialist(name)
        if list(engine.task_labels) != list(config.task.labels):
            raise SpecialistError(
                f"specialists.{name}: engine labels {engine.task_labels} differ from task.labels {config.task.labels}"
            )
        self._engine = engine
        self._follower = follower
        self._batcher: TokenBudgetBatcher[Pending] = TokenBudgetBatcher(
            spec.max_batch_tokens, spec.max_batch_size, spec.max_wait_ms / 1000, specialist=name
        )
        self._format = config.input.format
        self._max_text_bytes = config.input.max_text_bytes
        self._consume_batch = config.kafka.consume_batch
        self._labels = list(config.task.labels)
        self._source_topic = config.kafka.topic("texts")
        # Lean predictions (default): no copy of the text; the voter reads it once from `texts`.
        self._include_text = spec.include_text
        self._ok = PREDICTIONS.labels(name, "ok")
        self._publish(engine, None)

    @property
    def engine(self) -> InferenceEngine:
        """The engine serving now."""
        return self._engine

    @property
    def version(self) -> str:
        """Model version serving now."""
        return self._engine.version

    # -- Processor hooks ----------------------------------------------------------------------
    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        """Decode, queue and run what is ready; a short consumed batch means no more is waiting."""
        self._swap_if_released(out)
        received = time.monotonic()
        good: list[tuple[RawMessage, TextRecord]] = []
        for msg in batch:
            try:
                good.append((msg, decode("texts", msg, input_format=self._format,
                                         max_text_bytes=self._max_text_bytes)[0]))
            except BadInput as exc:
                out.send(OUTPUT_TOPIC, exc.record_id or msg.record_id, self._bad_input(msg, exc))
        if good:
            self._enqueue(good, received, out)
        # A consume that returned fewer messages than asked for found the topic drained:
        # waiting for more company would only add latency.
        self._run(self._batcher.take(flush=len(batch) < self._consume_batch), out)

    def tick(self, out: Outbox) -> None:
        """Run a partial batch whose oldest record has waited ``max_wait_ms``; swap models."""
        self._swap_if_released(out)
        if self._batcher.due():
            self._run(self._batcher.take(), out)

    def hold(self, topic: str, partition: int) -> int | None:
        """Lowest offset of this partition still waiting in the batch queue."""
        offsets = [p.msg.offset for p in self._batcher.items() if p.msg.partition == partition and p.msg.topic == topic]
        return min(offsets) if offsets else None

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Forget queued records of revoked partitions: their new owner re-reads them."""
        revoked = set(partitions)
        dropped = self._batcher.drop(lambda p: (p.msg.topic, p.msg.partition) in revoked)
        if dropped:
            log.info("%s: %d queued records of revoked partitions left to their new owner", self.name, dropped)

    def close(self, out: Outbox) -> None:
        """Label everything still queued, then stop following releases."""
        self._run(self._batcher.take(flush=True), out)
        if self._follower is not None:
            self._follower.stop()

    # -- work ---------------------------------------------------------------------------------------
    def _enqueue(self, good: list[tuple[RawMessage, TextRecord]], received: float, out: Outbox) -> None:
        try:
            encodings = self._engine.tokenize([record.text for _, record in good])
        except Exception as exc:  # the tokenizer's own error types; every record still gets its prediction
            log.exception("%s: tokenizing %d records failed", self.name, len(good))
            ERRORS.labels(self.name, "tokenize").inc()
            for msg, record in good:
                out.send(OUTPUT_TOPIC, record.id, self._error(msg, record, f"tokenize: {exc}", received))
            return
        self._batcher.add(
            [Pending(msg, record, enc, received) for (msg, record), enc in zip(good, encodings, strict=True)],
            [len(enc.ids) for enc in encodings],
        )

    def _run(self, batches: list[list[Pending]], out: Outbox) -> None:
        engine = self._engine
        for batch in batches:
            started = time.perf_counter()
            try:
                probs = engine.infer([p.encoding for p in batch])
            except InferenceError as exc:
                log.error("%s: %s", self.name, exc)
                ERRORS.labels(self.name, "inference").inc()
                for p in batch:
                    out.send(OUTPUT_TOPIC, p.record.id, self._error(p.msg, p.record, str(exc), p.received))
                continue
            INFERENCE_SECONDS.labels(self.name).observe(time.perf_counter() - started)
            done = time.monotonic()
            produced = now_ms()
            for p, row in zip(batch, probs.tolist(), strict=True):
                prediction = Prediction(
                    record_id=p.record.id,
                    specialist=self.name,
                    model_version=engine.version,
                    probs=row,
                    labels=self._labels,
                    status=PredictionStatus.PREDICTION_STATUS_OK,
                    record=p.record if self._include_text else None,
                    latency_ms=(done - p.received) * 1000,
                    produced_ms=produced,
                    source_topic=self._source_topic,
                    source_partition=p.msg.partition,
                    source_offset=p.msg.offset,
                )
                out.send(OUTPUT_TOPIC, p.record.id, prediction)
            self._ok.inc(len(batch))

    def _bad_input(self, msg: RawMessage, exc: BadInput) -> Prediction:
        PREDICTIONS.labels(self.name, "bad_input").inc()
        ERRORS.labels(self.name, "bad_input").inc()
        raw = msg.value or b""
        detail = exc.detail
        if len(raw) > RAW_KEEP_BYTES:
            # A payload near the broker's message limit cannot be copied into another message: producing it
            # would fail and crash-loop the specialist on the same offset. The full bytes stay on the input topic.
            detail = f"{detail} (raw payload cut to {RAW_KEEP_BYTES} of {len(raw)} bytes)"
            raw = raw[:RAW_KEEP_BYTES]
        return Prediction(
            record_id=exc.record_id or msg.record_id,
            specialist=self.name,
            model_version=self._engine.version,
            labels=self._labels,
            status=PredictionStatus.PREDICTION_STATUS_BAD_INPUT,
            reason=exc.reason,
            detail=detail,
            raw=raw,
            produced_ms=now_ms(),
            source_topic=self._source_topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
        )

    def _error(self, msg: RawMessage, record: TextRecord, reason: str, received: float) -> Prediction:
        PREDICTIONS.labels(self.name, "error").inc()
        return Prediction(
            record_id=record.id,
            specialist=self.name,
            model_version=self._engine.version,
            labels=self._labels,
            status=PredictionStatus.PREDICTION_STATUS_ERROR,
            reason=reason,
            record=record if self._include_text else None,
            latency_ms=(time.monotonic() - received) * 1000,
            produced_ms=now_ms(),
            source_topic=self._source_topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
        )

    # -- hot reload ------------------------------------------------------------------------------------
    def _swap_if_released(self, out: Outbox) -> None:
        if self._follower is None:
            return
        new = self._follower.take()
        if new is None:
            return
        # Between batches: whatever the old model was queued for, it finishes first.
        self._run(self._batcher.take(flush=True), out)
        old, self._engine = self._engine, new
        self._publish(new, old)
        log.info("%s: now serving version %r (was %r) on %s", self.name, new.version, old.version, new.providers)
        self._follower.retire(old)

    def _publish(self, engine: InferenceEngine, old: InferenceEngine | None) -> None:
        if old is not None:
            MODEL_VERSION.labels(self.name, old.version, old.provider).set(0)
        MODEL_VERSION.labels(self.name, engine.version, engine.provider).set(1)
