"""Token-budget batching, like text-embeddings-inference's ``core/src/queue.rs``.

A batch closes when its padded size (longest record x records) would pass ``max_batch_tokens``
or it holds ``max_batch_size`` records. Records are sorted by length before packing, so a batch
holds records of similar length and little of it is padding. A partial batch waits for company
at most ``max_wait_s``; full batches leave at once. Batch size, batch tokens and queue wait are
recorded here, where they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from autoannotator.artifacts.batching import plan_batches
from autoannotator.specialist.metrics import BATCH_SIZE, BATCH_TOKENS, QUEUE_SIZE, QUEUE_WAIT

T = TypeVar("T")


@dataclass(slots=True)
class Queued(Generic[T]):
    """One record waiting in the queue: the caller's payload, its token count, when it arrived."""

    item: T
    length: int
    enqueued: float = field(default_factory=time.monotonic)


class TokenBudgetBatcher(Generic[T]):
    """A queue of tokenized records that releases batches by token budget and maximum wait."""

    def __init__(self, max_batch_tokens: int, max_batch_size: int, max_wait_s: float, *, specialist: str) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._specialist = specialist
        self._queue: list[Queued[T]] = []

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, items: Sequence[T], lengths: Sequence[int]) -> None:
        """Queue records with their token counts (after truncation, special tokens included)."""
        now = time.monotonic()
        self._queue.extend(Queued(item, length, now) for item, length in zip(items, lengths, strict=True))
        QUEUE_SIZE.labels(self._specialist).set(len(self._queue))

    def items(self) -> list[T]:
        """Payloads still waiting (for the processor's commit hold)."""
        return [q.item for q in self._queue]

    def drop(self, predicate: Callable[[T], bool]) -> int:
        """Forget waiting records matching ``predicate`` (revoked partitions); returns how many."""
        before = len(self._queue)
        self._queue = [q for q in self._queue if not predicate(q.item)]
        QUEUE_SIZE.labels(self._specialist).set(len(self._queue))
        return before - len(self._queue)

    def due(self, now: float | None = None) -> bool:
        """Whether the oldest waiting record has waited ``max_wait_s``."""
        if not self._queue:
            return False
        now = time.monotonic() if now is None else now
        return now - min(q.enqueued for q in self._queue) >= self.max_wait_s

    def take(self, *, flush: bool = False) -> list[list[T]]:
        """Batches ready to run: every full one, and the partial rest when due or ``flush``."""
        if not self._queue:
            return []
        now = time.monotonic()
        release_all = flush or self.due(now)
        plan = plan_batches([q.length for q in self._queue], self.max_batch_tokens, self.max_batch_size)
        # The last (partial) batch waits for company unless it is due, flushed, or cannot grow.
        keep = plan.pop() if not release_all and plan and not self._is_full(plan[-1]) else []
        batches: list[list[T]] = []
        for indices in plan:
            members = [self._queue[i] for i in indices]
            BATCH_SIZE.labels(self._specialist).observe(len(members))
            BATCH_TOKENS.labels(self._specialist).observe(max(q.length for q in members) * len(members))
            wait = QUEUE_WAIT.labels(self._specialist)
            for q in members:
                wait.observe(now - q.enqueued)
            batches.append([q.item for q in members])
        self._queue = [self._queue[i] for i in keep]
        QUEUE_SIZE.labels(self._specialist).set(len(self._queue))
        return batches

    def _is_full(self, indices: list[int]) -> bool:
        if len(indices) >= self.max_batch_size:
            return True
        longest = max(self._queue[i].length for i in indices)
        # Full when even the shortest possible next record (as long as the longest) would not fit.
        return longest * (len(indices) + 1) > self.max_batch_tokens
