"""The ``Specialist`` processor: ``texts`` in, one ``Prediction`` per record out.

Per consumed batch: decode every message (bad input becomes a BAD_INPUT prediction at once,
never dropped), tokenize the good ones in one call, queue them in the token-budget batcher, and
run the batches that are ready. Records still waiting for company hold back the commit of their
partition (:meth:`Specialist.hold`), so a crash re-reads them rather than losing them. A new
model version from :mod:`.reload` is swapped in only between batches, after the queue has been
run with the old one: every record is labelled by exactly one complete model, which the
prediction names.

With ``overlap`` (the default) inference is the second stage of a two-stage pipeline: batches go
to an :class:`~.pipeline.InferenceWorker` thread through a bounded queue, and the loop goes on to
consume, decode and tokenize the next batch while this one runs. Predictions are still sent from
the loop's thread, in submission order, and records in flight hold back their partition's commit
like queued ones: nothing is committed before its prediction is produced (flush, then commit).
When a consume comes back short (the topic is drained), the handler waits for its batches, so an
idle stream gains no latency.

**Cold start.** A specialist whose store holds no version yet starts without an engine and
answers every record at once with a ``NO_MODEL`` prediction (the voter sends it to review, so
nothing is lost or guessed) until the trainer's first round releases a version, which it loads
like any other release.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding

from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.exceptions import InferenceError
from autoannotator.config import KafkaConfig, PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.specialist.batcher import TokenBudgetBatcher
from autoannotator.specialist.exceptions import SpecialistError
from autoannotator.specialist.metrics import ERRORS, INFERENCE_SECONDS, MODEL_VERSION, PREDICTIONS
from autoannotator.specialist.pipeline import InferenceJob, InferenceWorker
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.stream.loop import Outbox, Processor
from autoannotator.wire import Prediction, PredictionStatus, RawMessage, TextRecord, decode, now_ms, text_sha256

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


def group_id(name: str, kafka: KafkaConfig | None = None) -> str:
    """The consumer group of a specialist (each sees every record once), prefixed as ``KafkaConfig.group``."""
    return (kafka or KafkaConfig()).group(f"specialist-{name}")


class Specialist(Processor):
    """Labels every record of ``texts`` with one model and emits a ``Prediction`` for each."""

    topics = ("texts",)

    def __init__(
        self,
        config: PipelineConfig,
        name: str,
        engine: InferenceEngine | None,
        *,
        follower: ReleaseFollower | None = None,
    ) -> None:
        self.config = config
        self.name = name
        spec = config.specialist(name)
        if engine is None and follower is None:
            raise SpecialistError(f"specialists.{name}: without a model version it needs a release follower "
                                  "to ever serve one (cold start)")
        if engine is not None and list(engine.task_labels) != list(config.task.labels):
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
        self._worker: InferenceWorker[Pending] | None = InferenceWorker(name) if spec.overlap else None
        self._publish(engine, None)

    @property
    def engine(self) -> InferenceEngine | None:
        """The engine serving now (None before the first version of a cold start)."""
        return self._engine

    @property
    def version(self) -> str:
        """Model version serving now ("" before the first version of a cold start)."""
        return self._engine.version if self._engine is not None else ""

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
        if good and self._engine is None:
            for msg, record in good:
                out.send(OUTPUT_TOPIC, record.id, self._no_model(msg, record, received))
        elif good:
            self._enqueue(good, received, out)
        # A consume that returned fewer messages than asked for found the topic drained:
        # waiting for more company would only add latency.
        drained = len(batch) < self._consume_batch
        self._run(self._batcher.take(flush=drained), out)
        self._drain(out, wait=drained)

    def tick(self, out: Outbox) -> None:
        """Send finished predictions; run a partial batch whose oldest record has waited ``max_wait_ms``; swap."""
        self._swap_if_released(out)
        if self._batcher.due():
            self._run(self._batcher.take(), out)
        self._drain(out)

    def hold(self, topic: str, partition: int) -> int | None:
        """Lowest offset of this partition still waiting in the batch queue or being inferred."""
        waiting = self._batcher.items()
        if self._worker is not None:
            waiting.extend(self._worker.in_flight())
        offsets = [p.msg.offset for p in waiting if p.msg.partition == partition and p.msg.topic == topic]
        return min(offsets) if offsets else None

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Forget queued records of revoked partitions: their new owner re-reads them."""
        revoked = set(partitions)
        dropped = self._batcher.drop(lambda p: (p.msg.topic, p.msg.partition) in revoked)
        if dropped:
            log.info("%s: %d queued records of revoked partitions left to their new owner", self.name, dropped)

    def close(self, out: Outbox) -> None:
        """Label everything still queued or in flight, then stop following releases."""
        self._run(self._batcher.take(flush=True), out)
        self._drain(out, wait=True)
        if self._worker is not None:
            self._worker.stop()
        if self._follower is not None:
            self._follower.stop()

    # -- work ---------------------------------------------------------------------------------------
    def _enqueue(self, good: list[tuple[RawMessage, TextRecord]], received: float, out: Outbox) -> None:
        assert self._engine is not None
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
        """Infer ``batches`` with the engine serving now: on the worker (overlap) or here, in order."""
        if self._engine is None:  # cold start: nothing is ever queued without an engine
            return
        for batch in batches:
            job = InferenceJob(self._engine, batch, [p.encoding for p in batch])
            if self._worker is None:
                job.execute()
                self._emit(job, out)
            else:
                self._drain(out)  # send what is finished before (possibly) waiting for room
                self._worker.submit(job)

    def _drain(self, out: Outbox, *, wait: bool = False) -> None:
        """Send the predictions of finished jobs, in submission order (all of them when ``wait``)."""
        if self._worker is not None:
            for job in self._worker.finished(wait=wait):
                self._emit(job, out)

    def _emit(self, job: InferenceJob[Pending], out: Outbox) -> None:
        batch, engine = job.items, job.engine
        if isinstance(job.error, InferenceError):
            log.error("%s: %s", self.name, job.error)
            ERRORS.labels(self.name, "inference").inc()
            for p in batch:
                out.send(OUTPUT_TOPIC, p.record.id, self._error(p.msg, p.record, str(job.error), p.received))
            return
        if job.error is not None:  # not an inference failure but a defect: surface it, nothing is committed
            raise job.error
        assert job.probs is not None
        INFERENCE_SECONDS.labels(self.name).observe(job.seconds)
        done = job.finished_at
        produced = now_ms()
        for p, row in zip(batch, job.probs.tolist(), strict=True):
            prediction = self._prediction(p.msg, PredictionStatus.PREDICTION_STATUS_OK, record=p.record,
                                          version=engine.version, latency_ms=(done - p.received) * 1000,
                                          produced_ms=produced, probs=row)
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
        return self._prediction(
            msg, PredictionStatus.PREDICTION_STATUS_BAD_INPUT, record_id=exc.record_id or msg.record_id,
            # Of the whole input, not the kept cut: the same message gets the same hash everywhere.
            hashed=exc.text if exc.text is not None else msg.value or b"",
            version=self.version, reason=exc.reason, detail=detail, raw=raw,
        )

    def _error(self, msg: RawMessage, record: TextRecord, reason: str, received: float) -> Prediction:
        PREDICTIONS.labels(self.name, "error").inc()
        return self._prediction(msg, PredictionStatus.PREDICTION_STATUS_ERROR, record=record, version=self.version,
                                latency_ms=(time.monotonic() - received) * 1000, reason=reason)

    def _no_model(self, msg: RawMessage, record: TextRecord, received: float) -> Prediction:
        PREDICTIONS.labels(self.name, "no_model").inc()
        return self._prediction(
            msg, PredictionStatus.PREDICTION_STATUS_NO_MODEL, record=record,
            latency_ms=(time.monotonic() - received) * 1000, reason="no_model",
            detail="no model version yet (cold start): the trainer builds the first from reviewed records",
        )

    def _prediction(self, msg: RawMessage, status: int, *, record: TextRecord | None = None,
                    record_id: str | None = None, hashed: str | bytes | None = None, version: str | None = None,
                    latency_ms: float = 0.0, produced_ms: int | None = None, **fields: Any) -> Prediction:
        """One prediction of this specialist for input ``msg``: every status shares the id, hash and source fields.

        ``record`` gives the id and the hashed text (and is carried when ``include_text``); without
        it ``record_id`` and ``hashed`` (the raw input) do.
        """
        return Prediction(
            record_id=record.id if record is not None else record_id,
            specialist=self.name,
            model_version=version or "",
            labels=self._labels,
            status=status,
            record=record if record is not None and self._include_text else None,
            text_sha256=text_sha256(record.text if record is not None else hashed or b""),
            latency_ms=latency_ms,
            produced_ms=produced_ms if produced_ms is not None else now_ms(),
            source_topic=self._source_topic,
            source_partition=msg.partition,
            source_offset=msg.offset,
            **fields,
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
        self._drain(out, wait=True)
        old, self._engine = self._engine, new
        self._publish(new, old)
        if old is None:
            log.info("%s: cold start over, now serving its first version %r on %s", self.name, new.version,
                     new.providers)
            return
        log.info("%s: now serving version %r (was %r) on %s", self.name, new.version, old.version, new.providers)
        self._follower.retire(old)
        old.close()

    def _publish(self, engine: InferenceEngine | None, old: InferenceEngine | None) -> None:
        if old is not None:
            MODEL_VERSION.labels(self.name, old.version, old.provider).set(0)
        if engine is not None:
            MODEL_VERSION.labels(self.name, engine.version, engine.provider).set(1)
