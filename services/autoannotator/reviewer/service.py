"""The ``Reviewer`` processor: every hard record ends as one Label (+ ReviewedSample) or one Rejection.

Modes (``reviewer.mode``):

* ``llm`` — the LLM labels it; no valid label after ``max_label_attempts`` rounds → Rejection;
* ``human`` — it goes into the durable review queue and a person labels it on the review page;
* ``llm+human`` — the LLM first; what it cannot answer validly goes to the person.

The shared loop is synchronous; the LLM client is async. The processor owns an asyncio event
loop and runs each consumed batch's requests on it (``run_until_complete``), all concurrently.
Records not yet decided — endpoint down (circuit open), budget reached — stay pending in memory
and ``hold`` keeps their offsets from being committed; consumption is paused until the breaker's
cooldown or the budget window allows another try, so they wait in Kafka and nothing is lost.
Records put into the durable human queue no longer hold their offsets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoannotator.config import PipelineConfig
from autoannotator.errorbound import audit_chosen
from autoannotator.exceptions import BadInput, ConfigError
from autoannotator.reviewer.budget import Budget, require_price
from autoannotator.reviewer.cache import LabelCache
from autoannotator.reviewer.human import ReviewPage, open_review_page
from autoannotator.reviewer.llm import Answer, LLMClient
from autoannotator.reviewer.metrics import DECISIONS, PENDING, RECORD_COST, RECORDS_REVIEWED
from autoannotator.reviewer.prompt import PromptBuilder, PromptRecord
from autoannotator.reviewer.queue import ReviewQueue
from autoannotator.stream import Outbox, Processor
from autoannotator.wire import (
    Cost,
    HardSample,
    Label,
    LabelSource,
    RawMessage,
    Rejection,
    ReviewedSample,
    decode,
    now_ms,
    votes,
)

log = logging.getLogger(__name__)

SERVICE = "reviewer"


@dataclass
class Pending:
    """A consumed hard record not yet decided."""

    hard: HardSample
    topic: str
    partition: int
    offset: int


class Reviewer(Processor):
    """Consumes ``hard``; produces ``labels`` + ``reviewed`` or ``rejected`` for each record."""

    topics = ("hard",)

    def __init__(self, config: PipelineConfig, *, clock: Callable[[], float] = time.time) -> None:
        """Build the clients and stores for ``reviewer.mode``; ``clock`` drives the budget window (tests)."""
        self.config = config
        rc = config.reviewer
        self.mode = rc.mode
        self.labels = list(config.task.labels)
        for i, example in enumerate(rc.prompt.examples):
            if example.get("label") not in self.labels or not example.get("text"):
                raise ConfigError(f"reviewer.prompt.examples.{i}: needs a text and a label from task.labels")
        if self.mode != "human":
            require_price(rc.budget, rc.llm.prices, rc.llm.model)
        self._aloop = asyncio.new_event_loop()
        self.prompt = PromptBuilder(config.task, rc.prompt)
        self.budget = Budget(rc.budget, rc.llm.prices, path=rc.cache_path, clock=clock)
        self.cache = LabelCache(rc.cache_path)
        self.client: LLMClient | None = None
        if self.mode != "human":
            self.client = LLMClient(rc.llm, self.prompt, budget=self.budget, cache=self.cache)
        self.queue: ReviewQueue | None = None
        self.page: ReviewPage | None = None
        if self.mode != "llm" or rc.human_audit_rate > 0:  # a person reviews, or audits the LLM
            self.queue, self.page = open_review_page(config)
        self._pending: dict[tuple[str, int], dict[int, Pending]] = {}
        self._sent_human: list[str] = []  # emitted, acknowledged to the queue once their commit succeeded
        self._next_try = 0.0
        self._paused_for: str | None = None

    # -- the loop's hooks -------------------------------------------------------------------
    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        """Take a batch of hard records into pending and try to decide them."""
        for msg in batch:
            try:
                hard, _ = decode("hard", msg)
            except BadInput as exc:
                self._reject(out, exc.record_id or msg.record_id, None, exc.reason, exc.detail, raw=msg.value)
                continue
            if not hard.record.text.strip():
                self._reject(out, hard.record_id, hard, "empty", "the hard record has no text")
                continue
            self._pending.setdefault((msg.topic, msg.partition), {})[msg.offset] = Pending(
                hard, msg.topic, msg.partition, msg.offset
            )
        self._work(out)

    def tick(self, out: Outbox) -> None:
        """Retry held records when the breaker or budget allows; emit human labels whose undo window passed."""
        if (self._pending_count() or self._paused_for) and time.monotonic() >= self._next_try:
            self._work(out)
        if self.queue is not None:
            for item in self.queue.due(self.config.reviewer.human.undo_window_s):
                self._emit(out, item.hard, item.label or "", LabelSource.LABEL_SOURCE_HUMAN, None,
                           reviewer=f"human:{item.reviewer or 'human'}", revision=item.revision)
                DECISIONS.labels("human").inc()
                self._sent_human.append(item.record_id)

    def hold(self, topic: str, partition: int) -> int | None:
        """Lowest offset still pending in this partition (its commit must not pass it)."""
        pending = self._pending.get((topic, partition))
        return min(pending) if pending else None

    def wants_pause(self) -> bool:
        """Paused while the endpoint is down or the budget is spent: records wait in Kafka, none is dropped."""
        return self._paused_for is not None

    def on_committed(self) -> None:
        """The human labels emitted before this commit are on the broker: the queue may forget them."""
        if self._sent_human and self.queue is not None:
            self.queue.mark_emitted(self._sent_human)
        self._sent_human = []

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Forget pending records of revoked partitions: their new owner re-reads them."""
        for tp in partitions:
            self._pending.pop(tp, None)
        PENDING.set(self._pending_count())

    def close(self, out: Outbox) -> None:
        """Stop the page and release the client, cache and stores (pending records stay uncommitted)."""
        if self.page is not None:
            self.page.stop()
        if self.client is not None:
            self._aloop.run_until_complete(self.client.aclose())
        self._aloop.close()
        self.cache.close()
        self.budget.close()
        if self.queue is not None:
            self.queue.close()

    # -- deciding ---------------------------------------------------------------------------
    def _pending_count(self) -> int:
        return sum(len(p) for p in self._pending.values())


    def _blocked(self) -> str | None:
        if self.client is None:
            return None
        if self.client.breaker.retry_at is not None:
            return "circuit open"
        until = self.budget.blocked_until()
        if until is not None:
            return "budget reached" + (" (total)" if until == math.inf else " (hourly window)")
        return None

    def _work(self, out: Outbox) -> None:
        items = [p for part in self._pending.values() for p in part.values()]
        if not items:
            if self._paused_for is not None and self._blocked() is None:
                self._resume()
            return
        if self.mode == "human":
            for p in items:
                self._escalate(p, "human_mode")
            PENDING.set(self._pending_count())
            return
        blocked = self._blocked()
        if blocked:
            self._pause(blocked)
            return
        assert self.client is not None
        records = [PromptRecord(p.hard.record_id, p.hard.record.text) for p in items]
        outcomes = self._aloop.run_until_complete(self.client.label(records))
        deferred = 0
        for p in items:
            outcome = outcomes[p.hard.record_id]
            if outcome.status == "labelled":
                self._emit(out, p.hard, outcome.label or "", LabelSource.LABEL_SOURCE_LLM, outcome,
                           reviewer=f"llm:{self.config.reviewer.llm.model}")
                if self.queue is not None and audit_chosen(p.hard.record_id, self.config.reviewer.human_audit_rate,
                                                           salt="human-audit"):
                    self.queue.put(p.hard, "llm_audit", llm_label=outcome.label)  # a person checks the LLM
                DECISIONS.labels("llm").inc()
                self._drop(p)
            elif outcome.status == "invalid":
                if self.mode == "llm+human":
                    self._escalate(p, outcome.reason)
                else:
                    self._reject(out, p.hard.record_id, p.hard, outcome.reason, outcome.detail)
                    self._drop(p)
            else:
                deferred += 1
        PENDING.set(self._pending_count())
        if deferred:
            blocked = self._blocked()
            if blocked:
                self._pause(blocked)
            else:
                # Failed for a passing reason (retries exhausted on 429s): try again shortly.
                self._next_try = time.monotonic() + self.config.reviewer.llm.backoff_max_s
                log.warning("reviewer: %d records deferred; retrying in %.1fs", deferred,
                            self.config.reviewer.llm.backoff_max_s)
        elif self._paused_for is not None:
            self._resume()

    def _pause(self, why: str) -> None:
        if self._paused_for is None:
            log.warning("reviewer: %s; pausing consumption with %d records held", why, self._pending_count())
        self._paused_for = why
        # Check again after a short while: the breaker's cooldown or the budget window decides.
        self._next_try = time.monotonic() + 0.5

    def _resume(self) -> None:
        log.info("reviewer: %s no longer; resuming consumption", self._paused_for)
        self._paused_for = None

    def _drop(self, p: Pending) -> None:
        part = self._pending.get((p.topic, p.partition))
        if part is not None:
            part.pop(p.offset, None)
            if not part:
                del self._pending[(p.topic, p.partition)]

    def _escalate(self, p: Pending, reason: str) -> None:
        assert self.queue is not None
        overlap = audit_chosen(p.hard.record_id, self.config.reviewer.human.overlap, salt="human-overlap")
        self.queue.put(p.hard, reason, needed=2 if overlap else 1)  # durable: the offset may be committed now
        DECISIONS.labels("queued_for_human").inc()
        self._drop(p)

    # -- outputs ----------------------------------------------------------------------------
    def _emit(self, out: Outbox, hard: HardSample, label: str, source: int, outcome: Answer | None,
              *, reviewer: str, revision: int = 1) -> None:
        rid = hard.record_id
        cast, versions = votes(hard.predictions, list(hard.labels or self.labels))
        cost = Cost(model=self.config.reviewer.llm.model) if outcome is not None else Cost()
        if outcome is not None:
            cost.prompt_tokens, cost.completion_tokens = outcome.prompt_tokens, outcome.completion_tokens
            cost.usd, cost.cached = outcome.usd, outcome.cached
        human = source == LabelSource.LABEL_SOURCE_HUMAN
        decided = now_ms()
        out.send("labels", key=rid, value=Label(
            record_id=rid, record=hard.record, label=label, confidence=1.0 if human else 0.0, source=source,
            votes=cast, model_versions=versions, cost=cost, uncertainty=hard.uncertainty, decided_ms=decided,
            decided_by="human" if human else "llm", audit=hard.audit, revision=revision,
            decided_for=reviewer.split(":", 1)[1],
        ))
        out.send("reviewed", key=rid, value=ReviewedSample(
            record_id=rid, record=hard.record, label=label, source=source, predictions=hard.predictions,
            reviewer=reviewer, reviewed_ms=decided, audit=hard.audit, consensus_label=hard.consensus_label,
            score=hard.score, revision=revision,
        ))
        # Audit samples consensus would have accepted are spend the audit causes: reported apart.
        kind = "audit" if hard.reason == "audit" else "routed"
        RECORDS_REVIEWED.labels(kind).inc()
        RECORD_COST.labels(kind).inc(cost.usd)

    def _reject(self, out: Outbox, rid: str, hard: HardSample | None, reason: str, detail: str,
                raw: bytes | None = None) -> None:
        rejection = Rejection(record_id=rid, reason=reason, detail=detail[:1000], stage=SERVICE, rejected_ms=now_ms())
        if hard is not None:
            rejection.record.CopyFrom(hard.record)
        if raw:
            rejection.raw = raw
        out.send("rejected", key=rid, value=rejection)
        DECISIONS.labels("rejected").inc()
