"""Per-partition join of predictions by record id (DESIGN.md, "Delivery semantics").

Every topic is keyed by record id, so all k predictions of a record arrive in one partition and
the join never crosses partitions. Per partition it keeps:

- ``pending``: records still waiting for specialists, in order of their first prediction. That
  order is both offset order and arrival-time order, so the lowest pending offset (what the
  loop may commit up to) and the next record to time out are both at the front.
- ``decided``: a bounded memory of recently decided ids, so late or duplicate predictions for
  them are counted and ignored instead of opening a second decision.

The join only collects; :class:`~autoannotator.voter.routing.Router` decides.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from autoannotator.wire import Prediction, PredictionStatus

_BAD_INPUT = PredictionStatus.PREDICTION_STATUS_BAD_INPUT


class Arrival(enum.Enum):
    """What became of one prediction handed to :meth:`Join.add`."""

    PENDING = "pending"  # joined a record that still waits for others
    READY = "ready"  # completed a record (all k arrived, or bad input): decide it now
    DUPLICATE = "duplicate"  # this specialist already predicted this record: ignored
    LATE = "late"  # the record was already decided (e.g. after a timeout): ignored
    STRAY = "stray"  # not from a configured specialist: kept for the record, not a vote


@dataclass(slots=True)
class PendingRecord:
    """One record being joined."""

    record_id: str
    partition: int
    first_offset: int
    first_seen: float
    # Configured specialist -> its prediction, in arrival order.
    predictions: dict[str, Prediction] = field(default_factory=dict)
    # Predictions from unknown specialists or that could not be parsed: shown to review, never votes.
    strays: list[Prediction] = field(default_factory=list)

    def all_predictions(self) -> list[Prediction]:
        """Votes and strays together (what a hard sample carries)."""
        return [*self.predictions.values(), *self.strays]


@dataclass(slots=True)
class _PartitionState:
    pending: OrderedDict[str, PendingRecord] = field(default_factory=OrderedDict)
    decided: OrderedDict[str, frozenset[str]] = field(default_factory=OrderedDict)


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
        self, partition: int, offset: int, prediction: Prediction, now: float
    ) -> tuple[Arrival, PendingRecord | None]:
        """Join one prediction; returns what happened and, when READY, the completed record."""
        state = self._state(partition)
        rid = prediction.record_id
        specialist = prediction.specialist
        decided = state.decided.get(rid)
        if decided is not None:
            return (Arrival.DUPLICATE if specialist in decided else Arrival.LATE), None
        record = state.pending.get(rid)
        if record is None:
            record = state.pending[rid] = PendingRecord(rid, partition, offset, now)
            self.pending_count += 1
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

    def expired(self, now: float) -> list[PendingRecord]:
        """Remove and return every record that has waited ``timeout_s`` or longer."""
        out: list[PendingRecord] = []
        cutoff = now - self.timeout_s
        for state in self._partitions.values():
            pending = state.pending
            while pending:
                rid, record = next(iter(pending.items()))
                if record.first_seen > cutoff:
                    break
                self._pop(state, rid)
                out.append(record)
        return out

    def _pop(self, state: _PartitionState, rid: str) -> None:
        del state.pending[rid]
        self.pending_count -= 1

    def decided(self, record: PendingRecord) -> None:
        """Remember a decided record, so its late or duplicate predictions are ignored."""
        memory = self._state(record.partition).decided
        memory[record.record_id] = frozenset(record.predictions)
        if len(memory) > self.remember_decided:
            memory.popitem(last=False)

    def remember(self, partition: int, record_id: str, specialist: str) -> None:
        """Note a prediction of a record decided before this process started (a replayed one)."""
        memory = self._state(partition).decided
        memory[record_id] = memory.pop(record_id, frozenset()) | {specialist}
        if len(memory) > self.remember_decided:
            memory.popitem(last=False)

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
