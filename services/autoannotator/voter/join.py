"""Per-partition join of predictions by record id (DESIGN.md, "Delivery semantics").

Every topic is keyed by record id, so all k predictions of a record arrive in one partition and
the join never crosses partitions. Per partition it keeps:

- ``pending``: records still waiting for specialists, in order of their first prediction. That
  order is both offset order and arrival-time order, so the lowest pending offset (what the
  loop may commit up to) and the next record to time out are both at the front.
- ``decided``: a bounded memory of recently decided ids, so late or duplicate predictions for
  them are counted and ignored instead of opening a second decision.

**Join on record time.** A record's timeout counts from its first prediction's own timestamp (when
the specialist produced it), not from when this voter happened to read it. Time is measured by
each partition's event clock: the newest prediction timestamp seen in the partition, advanced by
the voter's own clock since that prediction arrived. A voter reading a backlog therefore times
nothing out early (its event clock is only as far as the data it has read), one that is caught up
times out on wall-clock time, and a specialist lagging behind the fastest one delays a decision
by up to ``join_timeout_s``; what it sends later is ``LATE`` (counted, never used). The text's own
``created_ms`` is deliberately not the start: after a backlog on ``texts`` every record would be
older than the timeout before its first prediction, and all would time out at once. Without
timestamps (0), the voter's clock is the event clock: the timeout counts from arrival.

An id belongs to the text of its first prediction to arrive (usually the first text sent; the
specialists batch by length, so not always). A prediction for the same id with another text hash
is a ``CONFLICT`` once per text, to be rejected as ``conflicting_duplicate``; it never joins,
votes for or replaces the first text's decision. Arrival order is the order of the
``predictions`` partition, so a replay after a crash keeps the same text.

The join only collects; :class:`~autoannotator.voter.routing.Router` decides.
"""

from __future__ import annotations

import enum
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from autoannotator.wire import Prediction, PredictionStatus, prediction_text_sha256

_BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT


class Arrival(enum.Enum):
    """What became of one prediction handed to :meth:`Join.add`."""

    PENDING = "pending"  # joined a record that still waits for others
    READY = "ready"  # completed a record (all k arrived, or bad input): decide it now
    DUPLICATE = "duplicate"  # this specialist already predicted this record: ignored
    LATE = "late"  # the record was already decided (e.g. after a timeout): ignored
    STRAY = "stray"  # not from a configured specialist: kept for the record, not a vote
    CONFLICT = "conflict"  # first prediction of another text under a known id: reject that text


@dataclass(slots=True)
class PendingRecord:
    """One record being joined."""

    record_id: str
    partition: int
    first_offset: int
    first_seen: float
    # When the join gives up waiting, on the partition's event clock (record time + timeout).
    deadline: float = 0.0
    # Configured specialist -> its prediction, in arrival order.
    predictions: dict[str, Prediction] = field(default_factory=dict)
    # Predictions from unknown specialists or that could not be parsed: shown to review, never votes.
    strays: list[Prediction] = field(default_factory=list)
    # Hash of the text that owns this id ("" until a prediction names one).
    text_sha256: str = ""
    # Hashes of other texts seen with this id (each rejected once).
    conflicts: set[str] = field(default_factory=set)

    def all_predictions(self) -> list[Prediction]:
        """Votes and strays together (what a hard sample carries)."""
        return [*self.predictions.values(), *self.strays]


@dataclass(slots=True)
class _Decided:
    """What is remembered of a decided id."""

    text_sha256: str
    specialists: frozenset[str]
    conflicts: set[str]


@dataclass(slots=True)
class _PartitionState:
    pending: OrderedDict[str, PendingRecord] = field(default_factory=OrderedDict)
    decided: OrderedDict[str, _Decided] = field(default_factory=OrderedDict)
    # (deadline, record id) of pending records; entries of records decided meanwhile are skipped.
    deadlines: list[tuple[float, str]] = field(default_factory=list)
    # The newest event time seen (seconds) and the voter's clock when it was seen (None: no timestamps).
    watermark: float | None = None
    watermark_at: float = 0.0

    def event_now(self, now: float) -> float:
        """The partition's event clock at voter time ``now``."""
        if self.watermark is None:
            return now
        return self.watermark + (now - self.watermark_at)


def _other_text(seen: PendingRecord | _Decided, text_hash: str) -> Arrival | None:
    """CONFLICT the first time another text shows up under this id, DUPLICATE after; None: same text."""
    if not text_hash:
        return None
    if not seen.text_sha256:
        seen.text_sha256 = text_hash
        return None
    if text_hash == seen.text_sha256:
        return None
    if text_hash in seen.conflicts:
        return Arrival.DUPLICATE
    seen.conflicts.add(text_hash)
    return Arrival.CONFLICT


class Join:
    """Pending state of every assigned partition of ``predictions``."""

    def __init__(self, specialists: Sequence[str], *, timeout_s: float, remember_decided: int = 10_000) -> None:
        self.specialists = frozenset(specialists)
        self.k = len(self.specialists)
        self.timeout_s = timeout_s
        self.remember_decided = remember_decided
        self._partitions: dict[int, _PartitionState] = {}
        self.pending_count = 0

    def _state(self, partition: int) -> _PartitionState:
        state = self._partitions.get(partition)
        if state is None:
            state = self._partitions[partition] = _PartitionState()
        return state

    def add(
        self, partition: int, offset: int, prediction: Prediction, now: float, *, seen_ms: int = 0,
    ) -> tuple[Arrival, PendingRecord | None]:
        """Join one prediction; returns what happened and, when READY, the completed record.

        ``now`` is the voter's clock; ``seen_ms`` this prediction's timestamp (epoch ms; 0: unknown).
        """
        state = self._state(partition)
        self._see(state, seen_ms, now)
        rid = prediction.record_id
        specialist = prediction.specialist
        text_hash = prediction_text_sha256(prediction)
        decided = state.decided.get(rid)
        if decided is not None:
            other = _other_text(decided, text_hash)
            if other is not None:
                return other, None
            return (Arrival.DUPLICATE if specialist in decided.specialists else Arrival.LATE), None
        record = state.pending.get(rid)
        if record is None:
            started = seen_ms / 1000 if seen_ms > 0 else state.event_now(now)
            record = state.pending[rid] = PendingRecord(rid, partition, offset, now, started + self.timeout_s,
                                                        text_sha256=text_hash)
            heapq.heappush(state.deadlines, (record.deadline, rid))
            self.pending_count += 1
        else:
            other = _other_text(record, text_hash)
            if other is not None:
                return other, None
        if specialist not in self.specialists:
            record.strays.append(prediction)
            return Arrival.STRAY, None
        if specialist in record.predictions:
            return Arrival.DUPLICATE, None
        record.predictions[specialist] = prediction
        if len(record.predictions) == self.k or prediction.status == _BAD_INPUT:
            self._pop(state, rid)
            return Arrival.READY, record
        return Arrival.PENDING, record

    @staticmethod
    def _see(state: _PartitionState, seen_ms: int, now: float) -> None:
        if seen_ms > 0 and (state.watermark is None or seen_ms / 1000 > state.watermark):
            state.watermark, state.watermark_at = seen_ms / 1000, now

    def advance(self, partition: int, seen_ms: int, now: float) -> list[PendingRecord]:
        """Move the partition's event clock to a prediction's timestamp; returns the records it expires.

        Called before that prediction is joined: a prediction stamped after a record's deadline
        finds the record already decided (``LATE``), whatever batch it was read in, so a replay of
        the partition decides the same way.
        """
        state = self._state(partition)
        self._see(state, seen_ms, now)
        if seen_ms <= 0 or not state.deadlines or state.deadlines[0][0] >= seen_ms / 1000:
            return []
        return self._expire(state, seen_ms / 1000, strict=True)

    def expired(self, now: float) -> list[PendingRecord]:
        """Remove and return every record whose deadline its partition's event clock has reached."""
        out: list[PendingRecord] = []
        for state in self._partitions.values():
            out.extend(self._expire(state, state.event_now(now), strict=False))
        return out

    def _expire(self, state: _PartitionState, clock: float, *, strict: bool) -> list[PendingRecord]:
        out: list[PendingRecord] = []
        heap = state.deadlines
        while heap and (heap[0][0] < clock if strict else heap[0][0] <= clock):
            deadline, rid = heapq.heappop(heap)
            record = state.pending.get(rid)
            if record is None or record.deadline != deadline:
                continue  # decided before its deadline
            self._pop(state, rid)
            out.append(record)
        if not state.pending and heap:
            heap.clear()
        return out

    def _pop(self, state: _PartitionState, rid: str) -> None:
        del state.pending[rid]
        self.pending_count -= 1

    def decided(self, record: PendingRecord) -> None:
        """Remember a decided record, so its late or duplicate predictions are ignored."""
        memory = self._state(record.partition).decided
        memory[record.record_id] = _Decided(record.text_sha256, frozenset(record.predictions), record.conflicts)
        if len(memory) > self.remember_decided:
            memory.popitem(last=False)

    def remember(self, partition: int, record_id: str, specialist: str, text_sha256: str = "") -> None:
        """Note a prediction of a record decided before this process started (a replayed one).

        Replayed in offset order, the first text hash is the id's own; others were rejected then.
        """
        memory = self._state(partition).decided
        seen = memory.pop(record_id, None) or _Decided(text_sha256, frozenset(), set())
        if _other_text(seen, text_sha256) is None:
            seen.specialists |= {specialist}
        memory[record_id] = seen
        if len(memory) > self.remember_decided:
            memory.popitem(last=False)

    def kept_sha256(self, partition: int, record_id: str) -> str:
        """Hash of the text that owns ``record_id`` in ``partition`` ("" when unknown)."""
        state = self._state(partition)
        seen = state.pending.get(record_id) or state.decided.get(record_id)
        return seen.text_sha256 if seen is not None else ""

    def hold(self, partition: int) -> int | None:
        """Lowest offset of a still-pending record in ``partition`` (None: nothing pending)."""
        state = self._partitions.get(partition)
        if state is None or not state.pending:
            return None
        return next(iter(state.pending.values())).first_offset

    def drop(self, partitions: Iterable[int]) -> int:
        """Forget revoked partitions (their new owner re-reads from the last commit)."""
        dropped = 0
        for partition in partitions:
            state = self._partitions.pop(partition, None)
            if state is not None:
                dropped += len(state.pending)
        self.pending_count -= dropped
        return dropped
