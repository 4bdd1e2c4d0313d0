"""Streaming a list of records into a running pipeline at a steady rate, never waiting for training.

Used by ``autoannotator demo`` and ``bench/continual.py``. The producer sends one record every
``1 / rate`` seconds by the clock (it catches up after a slow poll rather than drifting), reads
the outcomes as they come, notes when new model versions are released and whether a training
round is running, and never holds a record back for a round: production models keep labelling
while candidates train. The only way the producer can wait on the pipeline is back-pressure
(the client's local queue is full because the broker does not take records fast enough); that
time is counted as ``paused_s``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Producer

from autoannotator.demo.datasets import Example
from autoannotator.demo.tracker import RecordOutcome, Tracker
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.wire import TextRecord, encode, now_ms


class StreamError(AutoAnnotatorError):
    """The stream could not be delivered or decided in time."""


@dataclass
class StreamResult:
    """What streaming observed."""

    order: list[str] = field(default_factory=list)
    sent_ms: dict[str, int] = field(default_factory=dict)
    # Records streamed when each batch of new versions was first seen, and what was released.
    rounds_at: list[int] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    # Seconds the producer was held up by the pipeline (back-pressure or a slow flush).
    paused_s: float = 0.0
    stream_s: float = 0.0
    wall_s: float = 0.0
    # Record ids sent while a training round was running.
    during_round: set[str] = field(default_factory=set)

    def latency_ms(self, outcomes: Mapping[str, RecordOutcome], ids: Iterable[str] | None = None) -> dict[str, float]:
        """p50 / p95 / max milliseconds from send to outcome of ``ids`` (default: all decided)."""
        wanted = None if ids is None else set(ids)
        chosen = [rid for rid in self.order if wanted is None or rid in wanted]
        values = sorted(outcomes[rid].decided_ms - self.sent_ms[rid] for rid in chosen
                        if rid in outcomes and outcomes[rid].decided_ms)
        if not values:
            return {"records": 0, "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
        return {"records": len(values), "p50": statistics.median(values),
                "p95": values[min(len(values) - 1, int(0.95 * len(values)))], "max": values[-1]}


def stream_steadily(
    producer: Producer,
    topic: str,
    examples: Sequence[Example],
    tracker: Tracker,
    *,
    rate: float,
    timeout_s: float,
    check: Callable[[], None] = lambda: None,
    round_running: Callable[[], bool] = lambda: False,
    progress: Callable[[StreamResult, str], None] | None = None,
) -> StreamResult:
    """Send ``examples`` at ``rate`` records/s, then wait until every one has an outcome.

    ``check`` is called between sends (e.g. the supervisor's child check, raising when a service
    died); ``round_running`` says whether a training round runs now (polled about every 2 s).
    """
    if rate <= 0:
        raise StreamError(f"rate must be > 0 records/s, got {rate}")
    result = StreamResult()
    started = time.monotonic()
    deadline = started + timeout_s
    interval = 1.0 / rate
    seen_releases = len(tracker.releases)
    training, last_probe = False, 0.0
    for i, example in enumerate(examples):
        due = started + i * interval
        while True:
            now = time.monotonic()
            if now >= due:
                break
            tracker.poll(min(0.05, due - now))
        now = time.monotonic()
        if now - last_probe > 2.0:
            training, last_probe = round_running(), now
            check()
        record = TextRecord(id=example.id, text=example.text, meta={"domain": example.domain}, created_ms=now_ms())
        result.paused_s += _produce(producer, topic, example.id, encode(record))
        result.order.append(example.id)
        result.sent_ms[example.id] = record.created_ms
        if training:
            result.during_round.add(example.id)
        producer.poll(0)
        if len(tracker.releases) > seen_releases:
            result.rounds_at.append(len(result.order))
            result.released += [f"{r.specialist} {r.version}" for r in tracker.releases[seen_releases:]]
            seen_releases = len(tracker.releases)
        if progress is not None and i % 25 == 0:
            progress(result, "training round running" if training else "")
        if time.monotonic() > deadline:
            raise StreamError(f"timed out after sending {len(result.order)} of {len(examples)} records")
    if producer.flush(30):
        raise StreamError("the broker did not acknowledge the records")
    result.stream_s = time.monotonic() - started
    sent = set(result.order)
    while tracker.decided(sent) < len(sent):
        check()
        tracker.poll(0.3)
        if progress is not None:
            progress(result, "draining")
        if time.monotonic() > deadline:
            raise StreamError(f"timed out with {len(sent) - tracker.decided(sent)} records undecided")
    if len(tracker.releases) > seen_releases:
        result.released += [f"{r.specialist} {r.version}" for r in tracker.releases[seen_releases:]]
    result.wall_s = time.monotonic() - started
    return result


def _produce(producer: Producer, topic: str, key: str, value: bytes) -> float:
    """Produce one message; returns the seconds spent waiting on a full local queue."""
    waited = 0.0
    while True:
        try:
            producer.produce(topic, value, key=key)
            return waited
        except BufferError:  # the client's queue is full: the pipeline is not keeping up
            started = time.monotonic()
            producer.poll(0.1)
            waited += time.monotonic() - started


def print_progress(total: int, tracker: Tracker) -> Callable[[StreamResult, str], None]:
    """A one-line progress printer for :func:`stream_steadily`."""
    started = time.monotonic()

    def show(result: StreamResult, note: str) -> None:
        ids = result.order
        decided = [tracker.outcomes[rid].source for rid in ids if rid in tracker.outcomes]
        llm = sum(s in ("llm", "human") for s in decided[-500:]) / max(1, len(decided[-500:]))
        bar = "#" * int(30 * len(decided) / max(1, total))
        sys.stderr.write(f"\r[{bar:<30}] sent {len(ids)}/{total} decided {len(decided)} | LLM (last 500) "
                         f"{llm:.0%} | versions {len(result.released)} | {time.monotonic() - started:5.0f}s "
                         f"{note:<26}")
        sys.stderr.flush()

    return show
