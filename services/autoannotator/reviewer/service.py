"""The ``Reviewer`` processor: every hard record ends as one Label (+ ReviewedSample) or one Rejection.

Modes (``reviewer.mode``):

* ``llm`` — the LLM labels it; no valid label after ``max_label_attempts`` rounds → Rejection;
* ``human`` — it goes into the durable review queue and a person labels it on the review page;
* ``llm+human`` — the LLM first; what it cannot answer validly goes to the person.

The reviewer is a pipeline. Consumed hard records wait in memory; chunks of ``llm.batch_size``
go into a :class:`~autoannotator.reviewer.window.RequestWindow` of at most ``llm.concurrency``
requests, which runs them on an event loop of its own; every loop turn picks up the finished
chunks and emits their decisions. Nothing the LLM does blocks the poll loop, so consumption goes
on while requests are out, and a slow or failing request delays only its own records. ``hold``
keeps the offsets of every undecided record (waiting or in flight) from being committed, as the
voter does, so a crash or a rebalance re-reads them: nothing is lost.

Records not decided — endpoint down (circuit open), budget reached, retries exhausted — go back
to waiting; while the breaker or the budget forbids requests, or ``reviewer.max_pending`` records
are held, consumption is paused and the rest wait in Kafka. Records put into the durable human
queue no longer hold their offsets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoannotator.config import PipelineConfig
from autoannotator.errorbound import audit_chosen
from autoannotator.exceptions import BadInput, ConfigError
from autoannotator.metrics import RECORD_AGE, record_age_s
from autoannotator.reviewer.budget import Budget, require_price
from autoannotator.reviewer.cache import LabelCache
from autoannotator.reviewer.human import ReviewPage, open_review_page
from autoannotator.reviewer.llm import Answer, LLMClient
from autoannotator.reviewer.metrics import DECISIONS, INJECTION, PENDING, RECORD_COST, RECORDS_REVIEWED
from autoannotator.reviewer.prompt import InjectionCue, InjectionGuard, PromptBuilder, PromptRecord
from autoannotator.reviewer.queue import ReviewQueue
from autoannotator.reviewer.spend import SpendLedger
from autoannotator.reviewer.window import RequestWindow
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


@dataclass(eq=False)
class Pending:
    """A consumed hard record not yet decided: waiting for a request slot, or in flight."""

    hard: HardSample
    topic: str
    partition: int
    offset: int
    in_flight: bool = False
    not_before: float = 0.0  # monotonic time before which it is not sent again (after a deferral)


# One request's answers by record id, and for each labelled record whose text reads like an
# instruction: its cue and the LLM's second opinion on the text without it (InjectionGuard).
Asked = tuple[dict[str, Answer], dict[str, tuple[InjectionCue, Answer | None]]]


class Reviewer(Processor):
    """Consumes ``hard``; produces ``labels`` + ``reviewed`` or ``rejected`` for each record."""

    topics = ("hard",)

    def __init__(self, config: PipelineConfig, *, clock: Callable[[], float] = time.time,
                 bootstrap: str | None = None) -> None:
        """Build the clients and stores for ``reviewer.mode``; ``clock`` drives the budget window (tests).

        With ``bootstrap`` and ``reviewer.budget.shared``, spend is shared with every replica through
        the ``spend`` topic (:class:`~autoannotator.reviewer.spend.SpendLedger`).
        """
        self.config = config
        rc = config.reviewer
        self.mode = rc.mode
        self.labels = list(config.task.labels)
        for i, example in enumerate(rc.prompt.examples):
            if example.get("label") not in self.labels or not example.get("text"):
                raise ConfigError(f"reviewer.prompt.examples.{i}: needs a text and a label from task.labels")
        if self.mode != "human":
            require_price(rc.budget, rc.llm.prices, rc.llm.model)
        self.prompt = PromptBuilder(config.task, rc.prompt)
        self.guard = InjectionGuard(self.labels)
        self.ledger: SpendLedger | None = None
        if bootstrap is not None and rc.budget.shared and self.mode != "human":
            replica = rc.budget.replica_id or f"{socket.gethostname()}-{os.getpid()}"
            self.ledger = SpendLedger(config.kafka, bootstrap, replica, clock=clock).start()
        self.budget = Budget(rc.budget, rc.llm.prices, path=rc.cache_path, clock=clock, ledger=self.ledger)
        self.cache = LabelCache(rc.cache_path)
        self.client: LLMClient | None = None
        self.window: RequestWindow[Pending, Asked] | None = None
        self.queue: ReviewQueue | None = None
        self.page: ReviewPage | None = None
        if self.mode != "llm" or rc.human_audit_rate > 0:  # a person reviews, or audits the LLM
            self.queue, self.page = open_review_page(config)
        if self.mode != "human":
            client = self.client = LLMClient(rc.llm, self.prompt, budget=self.budget, cache=self.cache)

            async def ask(chunk: Sequence[Pending]) -> Asked:
                outcomes = await client.label([PromptRecord(p.hard.record_id, p.hard.record.text) for p in chunk])
                return outcomes, await self._second_opinions(chunk, outcomes)

            self.window = RequestWindow(ask, rc.llm.concurrency, name="reviewer-llm")
        self._pending: dict[tuple[str, int], dict[int, Pending]] = {}
        self._waiting: collections.deque[Pending] = collections.deque()  # FIFO: oldest offsets go first
        self._sent_human: list[str] = []  # emitted, acknowledged to the queue once their commit succeeded
        self._paused_for: str | None = None

    # -- the loop's hooks -------------------------------------------------------------------
    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        """Take a batch of hard records into pending and send what the window has room for."""
        for msg in batch:
            try:
                hard, _ = decode("hard", msg)
            except BadInput as exc:
                self._reject(out, exc.record_id or msg.record_id, None, exc.reason, exc.detail, raw=msg.value)
                continue
            if not hard.record.text.strip():
                self._reject(out, hard.record_id, hard, "empty", "the hard record has no text")
                continue
            p = Pending(hard, msg.topic, msg.partition, msg.offset)
            self._pending.setdefault((msg.topic, msg.partition), {})[msg.offset] = p
            self._waiting.append(p)
        self._work(out)

    def tick(self, out: Outbox) -> None:
        """Emit what the window finished, send what waits; emit human labels whose undo window passed."""
        self._work(out)
        if self.queue is not None:
            for item in self.queue.due(self.config.reviewer.human.undo_window_s):
                self._emit(out, item.hard, item.label or "", LabelSource.LABEL_SOURCE_HUMAN, None,
                           reviewer=f"human:{item.reviewer or 'human'}", revision=item.revision)
                DECISIONS.labels("human").inc()
                self._sent_human.append(item.record_id)

    def hold(self, topic: str, partition: int) -> int | None:
        """Lowest offset still undecided in this partition, waiting or in flight (its commit must not pass it)."""
        pending = self._pending.get((topic, partition))
        return min(pending) if pending else None

    def wants_pause(self) -> bool:
        """Paused while the endpoint is down, the budget is spent or ``max_pending`` records are held.

        What is not consumed waits in Kafka; none is dropped.
        """
        return self._paused_for is not None or self._pending_count() >= self.config.reviewer.max_pending

    def on_committed(self) -> None:
        """The human labels emitted before this commit are on the broker: the queue may forget them."""
        if self._sent_human and self.queue is not None:
            self.queue.mark_emitted(self._sent_human)
        self._sent_human = []

    def on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Forget the records of revoked partitions, waiting or in flight: their new owner re-reads them.

        Answers that still come back for them are ignored (:meth:`_collect` finds them gone), so a
        record is never decided by two replicas from one consumption.
        """
        revoked = set(partitions)
        for tp in revoked:
            self._pending.pop(tp, None)
        self._waiting = collections.deque(p for p in self._waiting if (p.topic, p.partition) not in revoked)
        PENDING.set(self._pending_count())

    def close(self, out: Outbox) -> None:
        """Stop the page and release the client, cache and stores (undecided records stay uncommitted)."""
        if self.page is not None:
            self.page.stop()
        if self.window is not None:
            assert self.client is not None
            self.window.close(cleanup=self.client.aclose())
        self.cache.close()
        self.budget.close()
        if self.ledger is not None:
            self.ledger.close()
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

    def _current(self, p: Pending) -> bool:
        """Whether ``p`` is still ours (not revoked, not decided since)."""
        return self._pending.get((p.topic, p.partition), {}).get(p.offset) is p

    def _work(self, out: Outbox) -> None:
        """Collect finished requests, then send waiting records while the window has room."""
        if self.mode == "human":
            while self._waiting:
                self._escalate(self._waiting.popleft(), "human_mode")
            PENDING.set(self._pending_count())
            return
        self._collect(out)
        self._dispatch()
        PENDING.set(self._pending_count())

    def _dispatch(self) -> None:
        assert self.window is not None
        if not self._waiting:
            if self._paused_for is not None and self._blocked() is None:
                self._resume()
            return
        blocked = self._blocked()
        if blocked:
            self._pause(blocked)
            return
        if self._paused_for is not None:
            self._resume()
        now = time.monotonic()
        size = self.config.reviewer.llm.batch_size
        later: list[Pending] = []
        while self._waiting and self.window.free > 0:
            chunk: list[Pending] = []
            while self._waiting and len(chunk) < size:
                p = self._waiting.popleft()
                if not self._current(p):
                    continue
                if p.not_before > now:
                    later.append(p)
                    continue
                p.in_flight = True
                chunk.append(p)
            if not chunk:
                break
            self.window.submit(chunk)
        self._waiting.extendleft(reversed(later))

    def _collect(self, out: Outbox) -> None:
        assert self.window is not None
        deferred = 0
        for done in self.window.finished():
            outcomes, suspects = done.result or ({}, {})
            if done.error is not None and not isinstance(done.error, asyncio.CancelledError):
                log.error("reviewer: a request failed unexpectedly; its %d records wait for another try",
                          len(done.items), exc_info=done.error)
            for p in done.items:
                if not self._current(p):
                    continue  # revoked meanwhile: the partition's new owner decides it
                p.in_flight = False
                outcome = outcomes.get(p.hard.record_id)
                if outcome is None or outcome.status == "deferred":
                    deferred += 1
                    # Failed for a passing reason (retries exhausted, breaker, budget): try again later.
                    p.not_before = time.monotonic() + self.config.reviewer.llm.backoff_max_s
                    self._waiting.append(p)
                elif outcome.status == "labelled" and p.hard.record_id in suspects:
                    if self._settle_suspect(out, p, outcome, *suspects[p.hard.record_id]):
                        deferred += 1  # no second opinion now: asked again later, like a deferral
                        p.not_before = time.monotonic() + self.config.reviewer.llm.backoff_max_s
                        self._waiting.append(p)
                elif outcome.status == "labelled":
                    self._llm_label(out, p, outcome)
                elif self.mode == "llm+human":
                    self._escalate(p, outcome.reason)
                else:
                    self._reject(out, p.hard.record_id, p.hard, outcome.reason, outcome.detail)
                    self._drop(p)
        if deferred:
            log.warning("reviewer: %d records deferred; %s", deferred,
                        self._blocked() or f"retrying in {self.config.reviewer.llm.backoff_max_s:.1f}s")

    def _llm_label(self, out: Outbox, p: Pending, outcome: Answer) -> None:
        """Emit the LLM's label; a sampled share also goes to a person who checks the LLM."""
        self._emit(out, p.hard, outcome.label or "", LabelSource.LABEL_SOURCE_LLM, outcome,
                   reviewer=f"llm:{self.config.reviewer.llm.model}")
        if self.queue is not None and audit_chosen(p.hard.record_id, self.config.reviewer.human_audit_rate,
                                                   salt="human-audit"):
            self.queue.put(p.hard, "llm_audit", llm_label=outcome.label)  # a person checks the LLM
        DECISIONS.labels("llm").inc()
        self._drop(p)

    async def _second_opinions(self, items: Sequence[Pending], outcomes: dict[str, Answer]
                         ) -> dict[str, tuple[InjectionCue, Answer | None]]:
        """For each labelled record whose text reads like an instruction: its cue, and the LLM's
        answer about the text with the cue's sentence cut out (None when nothing is left to ask)."""
        suspects: dict[str, InjectionCue] = {}
        for p in items:
            answer = outcomes.get(p.hard.record_id)
            if answer is not None and answer.status == "labelled":
                cue = self.guard.check(p.hard.record.text)
                if cue is not None:
                    suspects[p.hard.record_id] = cue
        if not suspects:
            return {}
        assert self.client is not None
        asks = [PromptRecord(rid, cue.redacted) for rid, cue in suspects.items() if cue.redacted.strip()]
        second = await self.client.label(asks) if asks else {}
        return {rid: (cue, second.get(rid)) for rid, cue in suspects.items()}

    def _settle_suspect(self, out: Outbox, p: Pending, outcome: Answer, cue: InjectionCue,
                        second: Answer | None) -> int:
        """Label a suspect only when the second opinion agrees; else a person or a rejection.

        Returns 1 when the second opinion could not be had now (the record stays pending)."""
        if second is not None and second.status == "deferred":
            return 1
        if second is not None and second.status == "labelled" and second.label == outcome.label:
            INJECTION.labels("confirmed").inc()
            self._llm_label(out, p, outcome)
            return 0
        detail = (f"the text reads like an instruction ({cue.phrase!r}"
                  + (f", asking for {cue.label!r}" if cue.label else "") + f"); the LLM answered {outcome.label!r}"
                  + (f" but {second.label!r} without it" if second is not None and second.label else
                     ", with no second opinion to confirm it"))
        log.warning("reviewer: record %s: %s", p.hard.record_id, detail)
        if self.mode == "llm+human":
            INJECTION.labels("to_person").inc()
            self._escalate(p, "injection_suspected")
        else:
            INJECTION.labels("rejected").inc()
            self._reject(out, p.hard.record_id, p.hard, "injection_suspected", detail)
            self._drop(p)
        return 0

    def _pause(self, why: str) -> None:
        if self._paused_for is None:
            log.warning("reviewer: %s; pausing consumption with %d records held", why, self._pending_count())
        self._paused_for = why  # every turn asks again: the breaker's cooldown or the budget window decides

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
        if revision == 1:  # end-to-end latency is to the first decision; a later revision corrects it
            RECORD_AGE.labels(SERVICE, "label").observe(record_age_s(hard.record.created_ms, decided / 1000))
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
        RECORD_AGE.labels(SERVICE, "rejected").observe(record_age_s(hard.record.created_ms) if hard else 0.0)
