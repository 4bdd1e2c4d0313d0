"""One budget for every reviewer replica: spend recorded on the compacted ``spend`` topic.

Each replica charges its LLM spend into time buckets of :data:`BUCKET_S` seconds and produces,
after every charge, its cumulative spend in the current bucket, keyed ``<replica>/<bucket start>``.
Every replica follows the topic from the beginning (no consumer group) and keeps the latest value
of every key; the fleet's total is the sum of all of them and its last hour the sum of the buckets
that overlap it. Compaction keeps one message per key, which is all a replica needs to rebuild the
sums after a restart. A replica's own charges count locally at once; the others' within a poll.

The hourly and total limits of ``reviewer.budget`` then hold for the fleet, up to the requests in
flight when a limit is crossed and those started before another replica's spend arrived (README,
"One budget for all replicas").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from autoannotator.config import KafkaConfig
from autoannotator.exceptions import BadInput
from autoannotator.stream.kafka import ensure_topics, make_producer
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import SPEND_TOPIC, Spend, decode, encode, now_ms

log = logging.getLogger(__name__)

#: Length of a spend bucket. The hourly window counts whole buckets, so it may count up to one
#: bucket more than the last hour: the limit errs on the side of spending less.
BUCKET_S = 60


class SpendLedger:
    """This replica's spend, produced to ``spend``, and every replica's, followed from it; a context manager."""

    def __init__(self, kafka: KafkaConfig, bootstrap: str, replica: str, *,
                 clock: Callable[[], float] = time.time, poll_s: float = 0.2) -> None:
        self.replica = replica
        self._kafka = kafka
        self._clock = clock
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._values: dict[tuple[str, int], float] = {}  # (replica, bucket start) -> cumulative USD
        self._requests: dict[int, int] = defaultdict(int)  # own requests per bucket
        self._total: float | None = 0.0  # math.fsum of _values, None when stale
        ensure_topics(kafka, bootstrap, [SPEND_TOPIC])
        self._topic = kafka.topic(SPEND_TOPIC)
        self._producer = make_producer(kafka, bootstrap)
        self._reader = TopicReader(kafka, bootstrap, SPEND_TOPIC, from_beginning=True)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, catch_up_s: float = 30.0) -> SpendLedger:
        """Read the topic to its end (the fleet's spend so far, this replica's own included), then follow it."""
        read = self._feed(self._reader.drain(catch_up_s))
        log.info("spend ledger: %d entries read; fleet total $%.4f, last hour $%.4f", read, self.total(),
                 self.window(self._clock()))
        self._thread = threading.Thread(target=self._follow, name="spend-ledger", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop following; wait for this replica's last entries to be acknowledged."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        remaining = self._producer.flush(10)
        if remaining:
            log.warning("spend ledger: %d spend entries not acknowledged at close", remaining)
        self._reader.close()

    def __enter__(self) -> SpendLedger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recording ---------------------------------------------------------------------------
    def record(self, usd: float, at: float | None = None) -> None:
        """Add one request's cost to this replica's current bucket and publish the bucket's new total."""
        now = self._clock() if at is None else at
        bucket = int(now // BUCKET_S) * BUCKET_S
        key = (self.replica, bucket)
        with self._lock:
            value = self._values.get(key, 0.0) + usd
            self._set(key, value)
            self._requests[bucket] += 1
            requests = self._requests[bucket]
        message = Spend(replica=self.replica, window_start_s=bucket, usd=value, requests=requests, updated_ms=now_ms())
        self._produce(f"{self.replica}/{bucket}", encode(message))

    def _produce(self, key: str, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value, key=key, on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _delivered(self, err: object, _msg: object) -> None:
        if err is not None:  # the next entry of the bucket carries the cumulative value again
            log.warning("spend ledger: an entry was not delivered: %s", err)

    # -- reading -----------------------------------------------------------------------------
    def total(self) -> float:
        """The fleet's spend, all time."""
        with self._lock:
            if self._total is None:  # exactly rounded, so every replica that knows the same entries agrees
                self._total = math.fsum(self._values.values())
            return self._total

    def spent_by(self, replica: str) -> float:
        """One replica's spend, all time."""
        with self._lock:
            return sum(usd for (name, _), usd in self._values.items() if name == replica)

    def window(self, now: float) -> float:
        """The fleet's spend in the buckets that overlap the hour before ``now``."""
        with self._lock:
            return math.fsum(usd for (_, start), usd in self._values.items() if start + BUCKET_S > now - 3600)

    def buckets(self, now: float) -> list[tuple[int, float]]:
        """``(bucket start, fleet USD)`` of the buckets overlapping the last hour, oldest first."""
        with self._lock:
            recent: dict[int, list[float]] = defaultdict(list)
            for (_, start), usd in self._values.items():
                if start + BUCKET_S > now - 3600:
                    recent[start].append(usd)
            return sorted((start, math.fsum(values)) for start, values in recent.items())

    def _set(self, key: tuple[str, int], value: float) -> None:
        """Keep the larger of the known and the new cumulative value (caller holds the lock)."""
        old = self._values.get(key, 0.0)
        if value <= old:
            return
        self._values[key] = value
        self._total = None

    def _feed(self, messages: list) -> int:
        count = 0
        for msg in messages:
            try:
                entry, _ = decode(SPEND_TOPIC, msg)
            except BadInput as exc:
                log.warning("spend ledger: skipping an undecodable entry at offset %d: %s", msg.offset, exc)
                continue
            with self._lock:
                self._set((entry.replica, entry.window_start_s), entry.usd)
                if entry.replica == self.replica:  # a restart under the same name resumes its counts
                    self._requests[entry.window_start_s] = max(self._requests[entry.window_start_s], entry.requests)
            count += 1
        return count

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self._feed(self._reader.poll(self._poll_s))
                self._producer.poll(0)
            except Exception:  # the follower must outlive a bad poll; limits use what is known meanwhile
                log.exception("spend ledger: reading the spend topic failed; retrying")
                self._stop.wait(1.0)
