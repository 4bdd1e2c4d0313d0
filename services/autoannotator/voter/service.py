"""The :class:`Voter` processor: ``predictions`` in; exactly one of ``labels``, ``hard`` or
``rejected`` out per record, keyed by record id (DESIGN.md, "Single writer of outcomes").

Run by the shared loop. ``hold`` keeps each partition's commit below its oldest pending record,
so after a crash the voter re-reads every prediction of every undecided record: a replay can
repeat a decision, never lose one. Audit samples are chosen by a hash of the id, so a replay
chooses the same ones; the error-bounded thresholds come from an :class:`AuditWindow` that the
``voter`` command feeds from ``reviewed`` and ``model-releases`` (:class:`AuditFollower`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from autoannotator.config import PipelineConfig
from autoannotator.errorbound import ACCEPT_NOTHING, Certified
from autoannotator.exceptions import BadInput
from autoannotator.metrics import RECORD_AGE, record_age_s
from autoannotator.stream.loop import Outbox, Processor
from autoannotator.voter import metrics
from autoannotator.voter.audit import AuditWindow, Calibrations, restart_metric
from autoannotator.voter.join import Arrival, Join, PendingRecord
from autoannotator.voter.routing import Decision, Router
from autoannotator.voter.texts import TextFetcher
from autoannotator.wire import (
    HardSample,
    Label,
    LabelSource,
    Prediction,
    PredictionStatus,
    RawMessage,
    Rejection,
    TextRecord,
    decode,
    now_ms,
    prediction_text_sha256,
    votes,
)

log = logging.getLogger(__name__)

STAGE = "voter"
_BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT
_CONSENSUS = LabelSource.LABEL_SOURCE_CONSENSUS


class Voter(Processor):
    """Joins the configured specialists' predictions per record and routes each record once."""

    topics = ("predictions",)

    def __init__(self, config: PipelineConfig, *, clock: Callable[[], float] = time.monotonic,
                 window: AuditWindow | None = None, texts: TextFetcher | None = None) -> None:
        """``texts`` reads the texts that lean predictions do not carry (without it, outputs of such
        records carry only their id)."""
        self.config = config
        self.texts = texts
        self._ready: list[tuple[PendingRecord, Decision]] = []
        voter = config.voter
        self.window = window or AuditWindow(
            config.task.labels, [spec.name for spec in config.specialists], Calibrations(voter.temperatures),
            target_error=voter.target_error, confidence=voter.bound_confidence,
            min_samples=voter.min_audit_samples, size=voter.audit_window, quorum=voter.quorum,
            on_restart=restart_metric,
        )
        self.router = Router.from_config(config, temperature=self.window.calibrations.temperature,
                                         threshold=self.window.certified)
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
        self._audits = {kind: metrics.AUDITS.labels(kind) for kind in ("extra", "routed")}
        self._shown: tuple[tuple[tuple[str, str], ...], Certified] | None = None
        metrics.TARGET_ERROR.set(voter.target_error)
        self._late_by: dict[str, object] = {}
        self._late_logged: dict[str, float] = {}
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
                    prediction, rid = decode("predictions", msg)
                    join.remember(msg.partition, rid, prediction.specialist, prediction_text_sha256(prediction))
                except BadInput as exc:
                    join.remember(msg.partition, exc.record_id or msg.record_id, "")
                continue
            if msg.timestamp_ms > 0:
                for expired in join.advance(msg.partition, msg.timestamp_ms, now):
                    self._timed_out(expired, out, now)
            prediction = self._parse(msg)
            arrival, record = join.add(msg.partition, msg.offset, prediction, now, seen_ms=msg.timestamp_ms)
            if arrival is Arrival.READY:
                self._decide(record, out, now, timed_out=False)
            elif arrival is Arrival.CONFLICT:
                self._reject_conflict(msg.partition, prediction, out)
            elif arrival is Arrival.DUPLICATE:
                metrics.DUPLICATES.inc()
            elif arrival is Arrival.LATE:
                self._late(prediction, msg)
            elif arrival is Arrival.STRAY and prediction.specialist:  # undecodable ones were counted in _parse
                metrics.STRAYS.labels("unknown_specialist").inc()
                log.warning("prediction for %s from unconfigured specialist %r counts as no vote",
                            prediction.record_id, prediction.specialist)
        self._emit(out)
        metrics.PENDING.set(join.pending_count)

    def tick(self, out: Outbox) -> None:
        """Decide the records whose join timed out."""
        now = self._clock()
        expired = self.join.expired(now)
        for record in expired:
            self._timed_out(record, out, now)
        self._emit(out)
        if expired:
            metrics.PENDING.set(self.join.pending_count)

    def _timed_out(self, record: PendingRecord, out: Outbox, now: float) -> None:
        decision = self._decide(record, out, now, timed_out=True)
        metrics.TIMEOUTS.labels(decision.outcome).inc()

    def hold(self, topic: str, partition: int) -> int | None:
        """Commit only below the oldest record still pending in this partition."""
        return self.join.hold(partition)

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Drop revoked partitions' pending records: their new owner re-reads them."""
        dropped = self.join.drop(p for _, p in partitions)
        if dropped:
            log.info("revoked partitions %s with %d pending records", partitions, dropped)
        metrics.PENDING.set(self.join.pending_count)

    def _late(self, prediction: Prediction, msg: RawMessage) -> None:
        """A prediction after its record was decided without it: counted per specialist, logged, not used.

        Late for a timeout (a lagging specialist) or after a bad-input prediction decided the record at once.
        """
        metrics.LATE.inc()
        specialist = prediction.specialist or "unknown"
        child = self._late_by.get(specialist)
        if child is None:
            child = self._late_by[specialist] = metrics.LATE_BY_SPECIALIST.labels(specialist)
        child.inc()
        last = self._late_logged.get(specialist, -math.inf)
        if self._clock() - last >= 60:  # once a minute per specialist: a lagging one would flood the log
            self._late_logged[specialist] = self._clock()
            log.warning("late prediction from %s for %s (%s[%d]@%d): its record was already decided without it "
                        "(join timeout of %gs, or bad input); counted in "
                        "autoannotator_voter_late_predictions_by_specialist_total", specialist, prediction.record_id,
                        msg.topic, msg.partition, msg.offset, self.config.voter.join_timeout_s)

    # -- deciding ----------------------------------------------------------------------------
    def _parse(self, msg: RawMessage) -> Prediction:
        try:
            # The id rule puts the key first: the key placed it in this partition, the join uses the same id.
            prediction, _ = decode("predictions", msg)
        except BadInput as exc:
            # Kept as a non-vote so the record still times out into a decision; nothing is lost.
            rid = exc.record_id or msg.record_id
            metrics.STRAYS.labels("undecodable").inc()
            log.warning("undecodable prediction for %s at %s[%d]@%d: %s", rid, msg.topic, msg.partition,
                        msg.offset, exc.detail)
            return Prediction(record_id=rid, status=PredictionStatus.PREDICTION_STATUS_ERROR,
                              reason="undecodable_prediction", raw=msg.value or b"")
        return prediction

    def _decide(self, record: PendingRecord, out: Outbox, now: float, *, timed_out: bool) -> Decision:
        rid = record.record_id
        decision = self.router.decide(list(record.predictions.values()), timed_out=timed_out, record_id=rid)
        self._ready.append((record, decision))  # sent at the end of the turn, with its text (_emit)
        self.join.decided(record)
        self.decided += 1
        self._count(decision.outcome, decision.reason)
        if decision.outcome != "rejected":
            self._uncertainty.observe(decision.uncertainty)
            self._confidence.observe(decision.confidence)
        if decision.audit:
            self._audits["extra" if decision.reason == "audit" else "routed"].inc()
        if self.router.policy == "error-bounded" and decision.versions:
            self._show(decision.versions)
        metrics.JOIN_WAIT.observe(now - record.first_seen)  # its record age is observed in _emit, with its text
        return decision

    def _count(self, outcome: str, reason: str) -> None:
        child = self._decisions.get((outcome, reason))
        if child is None:
            child = self._decisions[(outcome, reason)] = metrics.DECISIONS.labels(outcome, reason, self.router.policy)
        child.inc()

    def _reject_conflict(self, partition: int, prediction: Prediction, out: Outbox) -> None:
        """Reject a second text under a known id; the first text keeps the id and its decision."""
        rid = prediction.record_id
        kept, other = self.join.kept_sha256(partition, rid), prediction_text_sha256(prediction)
        rejection = Rejection(
            record_id=rid,
            reason="conflicting_duplicate",
            detail=f"id {rid!r} was first seen with the text of sha256 {kept}, which keeps the id; "
                   f"this message has another text (sha256 {other}) and is not labelled",
            stage=STAGE,
            rejected_ms=now_ms(),
            text_sha256=other,
            kept_text_sha256=kept,
        )
        if prediction.HasField("record"):
            rejection.record.CopyFrom(prediction.record)
        elif self.texts is not None and prediction.source_topic == self.texts.topic:
            # A lean prediction: the rejected text is read back from texts (a rare event, read at once).
            where = (prediction.source_partition, prediction.source_offset)
            text = self.texts.fetch({where: rid}).get(rid)
            if text is not None:
                rejection.record.CopyFrom(text)
        if prediction.raw:
            rejection.raw = prediction.raw
        out.send("rejected", rid, rejection)
        self._count("rejected", "conflicting_duplicate")
        log.warning("record id %r reused with another text (sha256 %s, first %s): rejected as "
                    "conflicting_duplicate", rid, other[:12], kept[:12])

    def _show(self, versions: tuple[tuple[str, str], ...]) -> None:
        """Point the error-bound gauges at the version set that just decided (when it changed)."""
        certified = self.window.certified(versions)
        if self._shown is not None and self._shown[0] == versions and self._shown[1] is certified:
            return
        self._shown = (versions, certified)
        metrics.THRESHOLD.set(1.01 if certified.threshold == ACCEPT_NOTHING else certified.threshold)
        metrics.ERROR_ESTIMATE.set(-1.0 if certified.accepted == 0 else certified.error)
        metrics.ERROR_UPPER.set(1.0 if certified.accepted == 0 else certified.upper)
        metrics.AUDIT_WINDOW.set(self.window.window_size(versions))

    def _emit(self, out: Outbox) -> None:
        """Send this turn's decisions; the texts lean predictions lack are read at once, in one pass."""
        if not self._ready:
            return
        ready, self._ready = self._ready, []
        texts: dict[str, TextRecord] = {}
        if self.texts is not None:
            wanted = {}
            for record, decision in ready:
                if decision.outcome != "rejected" and self._carried(record) is None:
                    where = self._where(record)
                    if where is not None:
                        wanted[where] = record.record_id
            texts = self.texts.fetch(wanted)
        for record, decision in ready:
            rid = record.record_id
            if decision.outcome == "rejected":
                RECORD_AGE.labels(STAGE, decision.outcome).observe(self._age(record, self._carried(record)))
                out.send("rejected", rid, self._rejection(record, decision))
                continue
            text = self._carried(record) or texts.get(rid)
            RECORD_AGE.labels(STAGE, decision.outcome).observe(self._age(record, text))
            if text is None:
                metrics.TEXT_MISSING.inc()
                log.warning("no text for %s (not in its predictions, not readable from texts): sent with its id only",
                            rid)
            if decision.outcome == "label":
                out.send("labels", rid, self._label(record, decision, text))
            else:
                out.send("hard", rid, self._hard(record, decision, text))

    def _where(self, record: PendingRecord) -> tuple[int, int] | None:
        """(partition, offset) of the record's text on ``texts``, from its predictions."""
        assert self.texts is not None
        for prediction in record.all_predictions():
            if prediction.source_topic == self.texts.topic:
                return prediction.source_partition, prediction.source_offset
        return None

    @staticmethod
    def _age(record: PendingRecord, text: TextRecord | None) -> float:
        """Seconds since the record entered the pipeline; for an undecodable input (no TextRecord),
        since the first specialist produced its prediction."""
        if text is not None and text.created_ms:
            return record_age_s(text.created_ms)
        produced = [p.produced_ms for p in record.all_predictions() if p.produced_ms]
        return record_age_s(min(produced)) if produced else 0.0

    @staticmethod
    def _carried(record: PendingRecord) -> TextRecord | None:
        """The text a prediction carries (predictions from before lean predictions, or include_text)."""
        for prediction in record.all_predictions():
            if prediction.HasField("record"):
                return prediction.record
        return None

    def _label(self, record: PendingRecord, decision: Decision, text: TextRecord | None) -> Label:
        label = Label(
            record_id=record.record_id,
            label=decision.label,
            confidence=decision.confidence,
            source=_CONSENSUS,
            uncertainty=decision.uncertainty,
            decided_ms=now_ms(),
            decided_by=decision.policy,
            revision=1,
        )
        if text is not None:
            label.record.CopyFrom(text)
        cast, versions = votes(decision.votes, self.labels, decision.vectors)
        label.votes.extend(cast)
        label.model_versions.update(versions)
        return label

    def _hard(self, record: PendingRecord, decision: Decision, text: TextRecord | None) -> HardSample:
        hard = HardSample(
            record_id=record.record_id,
            uncertainty=decision.uncertainty,
            reason=decision.reason,
            labels=self.labels,
            routed_ms=now_ms(),
            audit=decision.audit,
            consensus_label=decision.consensus_label,
            score=decision.score,
        )
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
            text_sha256=record.text_sha256,
        )
        bad = next(p for p in record.predictions.values() if p.status == _BAD_INPUT)
        if bad.HasField("record"):
            rejection.record.CopyFrom(bad.record)
        if bad.raw:
            rejection.raw = bad.raw
        return rejection
