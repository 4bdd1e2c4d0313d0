"""The :class:`Voter` processor: ``predictions`` in; exactly one of ``labels``, ``hard`` or
``rejected`` out per record, keyed by record id (DESIGN.md, "Single writer of outcomes").

Run by the shared loop. ``hold`` keeps each partition's commit below its oldest pending record,
so after a crash the voter re-reads every prediction of every undecided record: a replay can
repeat a decision, never lose one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from google.protobuf.message import DecodeError

from autoannotator.config import PipelineConfig
from autoannotator.metrics import RECORD_AGE, record_age_s
from autoannotator.stream.loop import Outbox, Processor
from autoannotator.v1.records_pb2 import (
    HardSample,
    Label,
    LabelSource,
    Prediction,
    PredictionStatus,
    Rejection,
    TextRecord,
)
from autoannotator.voter import metrics
from autoannotator.voter.join import Arrival, Join, PendingRecord
from autoannotator.voter.routing import Decision, Router, argmax
from autoannotator.wire import RawMessage, now_ms

log = logging.getLogger(__name__)

STAGE = "voter"
_BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT
_CONSENSUS = LabelSource.LABEL_SOURCE_CONSENSUS


class Voter(Processor):
    """Joins the configured specialists' predictions per record and routes each record once."""

    topics = ("predictions",)

    def __init__(self, config: PipelineConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.router = Router.from_config(config)
        self.labels = list(config.task.labels)
        self.join = Join(
            self.router.specialists,
            timeout_s=config.voter.join_timeout_s,
            remember_decided=config.voter.remember_decided,
        )
        self._clock = clock
        # After a restart, predictions just below the committed offset belong to records decided
        # before it: re-read them to remember those records, so their late duplicates are ignored.
        self.replay_window = config.voter.remember_decided
        # Metric children resolved once: .labels() per record would cost more than the decision.
        self._decisions: dict[tuple[str, str], object] = {}
        self._uncertainty = metrics.UNCERTAINTY.labels(self.router.policy)
        self._confidence = metrics.CONFIDENCE.labels(self.router.policy)
        self.decided = 0

    # -- the loop's hooks -------------------------------------------------------------------
    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        """Join each prediction; decide every record that became complete."""
        now = self._clock()
        join = self.join
        for msg in batch:
            if msg.replay:
                # Below the committed offset: its record was decided before (commits stop below
                # the oldest pending record). Remember it; decide nothing.
                try:
                    join.remember(msg.partition, msg.record_id, Prediction.FromString(msg.value or b"").specialist)
                except DecodeError:
                    join.remember(msg.partition, msg.record_id, "")
                continue
            prediction = self._parse(msg)
            arrival, record = join.add(msg.partition, msg.offset, prediction, now)
            if arrival is Arrival.READY:
                self._decide(record, out, now, timed_out=False)
            elif arrival is Arrival.DUPLICATE:
                metrics.DUPLICATES.inc()
            elif arrival is Arrival.LATE:
                metrics.LATE.inc()
            elif arrival is Arrival.STRAY and prediction.specialist:  # undecodable ones were counted in _parse
                metrics.STRAYS.labels("unknown_specialist").inc()
                log.warning("prediction for %s from unconfigured specialist %r counts as no vote",
                            prediction.record_id, prediction.specialist)
        metrics.PENDING.set(join.pending_count)

    def tick(self, out: Outbox) -> None:
        """Decide the records whose join timed out."""
        now = self._clock()
        expired = self.join.expired(now)
        for record in expired:
            decision = self._decide(record, out, now, timed_out=True)
            metrics.TIMEOUTS.labels(decision.outcome).inc()
        if expired:
            metrics.PENDING.set(self.join.pending_count)

    def hold(self, topic: str, partition: int) -> int | None:
        """Commit only below the oldest record still pending in this partition."""
        return self.join.hold(partition)

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Drop revoked partitions' pending records: their new owner re-reads them."""
        dropped = self.join.drop(p for _, p in partitions)
        if dropped:
            log.info("revoked partitions %s with %d pending records", partitions, dropped)
        metrics.PENDING.set(self.join.pending_count)

    # -- deciding ----------------------------------------------------------------------------
    def _parse(self, msg: RawMessage) -> Prediction:
        rid = msg.record_id
        try:
            prediction = Prediction.FromString(msg.value or b"")
        except DecodeError as exc:
            # Kept as a non-vote so the record still times out into a decision; nothing is lost.
            metrics.STRAYS.labels("undecodable").inc()
            log.warning("undecodable prediction for %s at %s[%d]@%d: %s", rid, msg.topic, msg.partition,
                        msg.offset, exc)
            return Prediction(record_id=rid, status=PredictionStatus.PREDICTION_STATUS_ERROR,
                              reason="undecodable_prediction", raw=msg.value or b"")
        if prediction.record_id != rid:
            # The key placed it in this partition; the join must use the same id.
            prediction.record_id = rid
        return prediction

    def _decide(self, record: PendingRecord, out: Outbox, now: float, *, timed_out: bool) -> Decision:
        decision = self.router.decide(list(record.predictions.values()), timed_out=timed_out)
        rid = record.record_id
        if decision.outcome == "label":
            out.send("labels", rid, self._label(record, decision))
        elif decision.outcome == "hard":
            out.send("hard", rid, self._hard(record, decision))
        else:
            out.send("rejected", rid, self._rejection(record, decision))
        self.join.decided(record)
        self.decided += 1
        key = (decision.outcome, decision.reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = metrics.DECISIONS.labels(decision.outcome, decision.reason,
                                                                    self.router.policy)
        child.inc()
        if decision.outcome != "rejected":
            self._uncertainty.observe(decision.uncertainty)
            self._confidence.observe(decision.confidence)
        metrics.JOIN_WAIT.observe(now - record.first_seen)
        RECORD_AGE.labels(STAGE, decision.outcome).observe(self._age(record))
        return decision

    @staticmethod
    def _age(record: PendingRecord) -> float:
        """Seconds since the record entered the pipeline; for an undecodable input (no TextRecord),
        since the first specialist produced its prediction."""
        text = Voter._text(record)
        if text is not None and text.created_ms:
            return record_age_s(text.created_ms)
        produced = [p.produced_ms for p in record.all_predictions() if p.produced_ms]
        return record_age_s(min(produced)) if produced else 0.0

    @staticmethod
    def _text(record: PendingRecord) -> TextRecord | None:
        for prediction in record.all_predictions():
            if prediction.HasField("record"):
                return prediction.record
        return None

    def _label(self, record: PendingRecord, decision: Decision) -> Label:
        label = Label(
            record_id=record.record_id,
            label=decision.label,
            confidence=decision.confidence,
            source=_CONSENSUS,
            uncertainty=decision.uncertainty,
            decided_ms=now_ms(),
            decided_by=decision.policy,
        )
        text = self._text(record)
        if text is not None:
            label.record.CopyFrom(text)
        for prediction, vector in zip(decision.votes, decision.vectors, strict=True):
            top = argmax(vector)
            label.votes.add(specialist=prediction.specialist, model_version=prediction.model_version,
                            label=self.labels[top], confidence=vector[top])
            label.model_versions[prediction.specialist] = prediction.model_version
        return label

    def _hard(self, record: PendingRecord, decision: Decision) -> HardSample:
        hard = HardSample(
            record_id=record.record_id,
            uncertainty=decision.uncertainty,
            reason=decision.reason,
            labels=self.labels,
            routed_ms=now_ms(),
        )
        text = self._text(record)
        if text is not None:
            hard.record.CopyFrom(text)
        hard.predictions.extend(record.all_predictions())
        return hard

    def _rejection(self, record: PendingRecord, decision: Decision) -> Rejection:
        rejection = Rejection(
            record_id=record.record_id,
            reason=decision.reason,
            detail=decision.detail,
            stage=STAGE,
            rejected_ms=now_ms(),
        )
        bad = next(p for p in record.predictions.values() if p.status == _BAD_INPUT)
        if bad.HasField("record"):
            rejection.record.CopyFrom(bad.record)
        if bad.raw:
            rejection.raw = bad.raw
        return rejection
