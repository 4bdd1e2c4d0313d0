"""The reviewer as a pipeline: LLM requests run in a bounded window off the poll loop.

A slow request holds only its own records: the others are labelled meanwhile, the poll loop keeps
turning, and offsets are committed up to the lowest undecided record of each partition.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from autoannotator.mockllm import MockLLM
from autoannotator.reviewer.service import Reviewer
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader

from tests.helpers.kafka import running, send
from tests.helpers.reviewer import LABELS, committed_offsets, dataset, group, hard_items, read_topic
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

# The case is one request answered in 30 s and the rest in 50 ms; 10 s keeps the ratio
# (200 to 1) meaningful and the test short.
SLOW_S = 10.0
FAST_MS = 50.0
# The poll loop may go this long between turns, whatever the LLM does.
TURN_BOUND_S = 1.0


class Highest:
    """Samples ``value()`` every 10 ms in a thread and keeps the highest; a context manager."""

    def __init__(self, value: Callable[[], float]) -> None:
        self.value = value
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.01):
            self.worst = max(self.worst, self.value())

    def __enter__(self) -> Highest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _ends(config, bootstrap: str) -> dict[int, int]:
    """Per partition of ``hard``: the offset after its last message."""
    with TopicReader(config.kafka, bootstrap, "hard") as reader:
        messages = reader.drain()
    return {p: 1 + max((m.offset for m in messages if m.partition == p), default=-1)
            for p in range(config.kafka.partitions)}


def test_a_slow_request_delays_only_its_own_records_and_never_the_poll_loop(
    make_config, kafka_bootstrap, tmp_path
) -> None:
    texts, gold = dataset(40, "pl")
    slow_id = "pl0"
    mock = MockLLM(gold, labels=LABELS, latency_ms=FAST_MS)
    mock.delays = {slow_id: SLOW_S}
    url = mock.start_in_thread()
    config = make_config(
        kafka={"partitions": 6},
        reviewer={"mode": "llm", "cache_path": str(tmp_path / "cache.sqlite"),
                  "llm": {"base_url": url, "model": "mock", "batch_size": 4, "concurrency": 4, "timeout_s": 60}},
    )
    reviewer = Reviewer(config)
    loop = ServiceLoop(config, "reviewer", reviewer, group_id=group(config), bootstrap=kafka_bootstrap)
    try:
        with running(loop), Highest(lambda: time.monotonic() - loop._last_turn) as watcher:
            sent_at = time.monotonic()
            send(config, kafka_bootstrap, "hard", hard_items(texts))
            assert wait_until(lambda: any(slow_id in r.ids for r in mock.requests), 30)
            own = set(next(r.ids for r in mock.requests if slow_id in r.ids))
            others = set(texts) - own
            labels = read_topic(config, kafka_bootstrap, "labels", lambda got: {m.record_id for m in got} >= others)
            others_done_after = time.monotonic() - sent_at
            labelled_while_slow = {m.record_id for m in labels}
            # While the slow request is out, every other partition is committed to its end and the
            # slow record's partitions up to their lowest undecided record.
            ends = _ends(config, kafka_bootstrap)
            held = {p: reviewer.hold("hard", p) for p in range(6)}
            assert wait_until(lambda: all(
                committed_offsets(config, kafka_bootstrap)[("hard", p)] == (ends[p] if held[p] is None else held[p])
                for p in range(6)), 10)
            stalled_while_slow = watcher.worst
            labels = read_topic(config, kafka_bootstrap, "labels", lambda got: {m.record_id for m in got} >= set(texts),
                                timeout_s=SLOW_S + 30)
            assert wait_until(lambda: committed_offsets(config, kafka_bootstrap) == {("hard", p): ends[p]
                                                                                    for p in range(6)}, 10)
    finally:
        mock.stop_thread()
    assert others_done_after < SLOW_S / 2  # the others did not wait for the slow request
    assert labelled_while_slow & own == set()  # the slow request's records were still undecided then
    assert any(offset is not None for offset in held.values())
    assert stalled_while_slow < TURN_BOUND_S
    assert watcher.worst < TURN_BOUND_S
    assert Counter(m.record_id for m in labels) == Counter(set(texts))  # exactly one label each
    assert {m.record_id: m.label for m in labels} == gold.by_id


def test_a_failing_request_is_retried_later_without_holding_the_others(make_config, kafka_bootstrap, tmp_path) -> None:
    texts, gold = dataset(12, "fl")
    mock = MockLLM(gold, labels=LABELS, latency_ms=FAST_MS)
    mock.script.extend(["500"])  # the first request fails and is not retried at once
    url = mock.start_in_thread()
    config = make_config(reviewer={
        "mode": "llm", "cache_path": str(tmp_path / "cache.sqlite"),
        "llm": {"base_url": url, "model": "mock", "batch_size": 2, "concurrency": 3, "max_retries": 0,
                "backoff_max_s": 3.0, "breaker_failures": 10},
    })
    reviewer = Reviewer(config)
    try:
        with running(ServiceLoop(config, "reviewer", reviewer, group_id=group(config), bootstrap=kafka_bootstrap)):
            send(config, kafka_bootstrap, "hard", hard_items(texts))
            assert wait_until(lambda: mock.requests and mock.requests[0].outcome == "500", 30)
            failed = set(mock.requests[0].ids)
            others = read_topic(config, kafka_bootstrap, "labels",
                                lambda got: {m.record_id for m in got} >= set(texts) - failed, timeout_s=2.5)
            labels = read_topic(config, kafka_bootstrap, "labels", lambda got: {m.record_id for m in got} >= set(texts))
    finally:
        mock.stop_thread()
    assert {m.record_id for m in others} >= set(texts) - failed  # labelled before the failed ones' retry was due
    assert {m.record_id for m in others} & failed == set()
    assert Counter(m.record_id for m in labels) == Counter(set(texts))
    assert {m.record_id: m.label for m in labels} == gold.by_id


def test_consumption_pauses_at_max_pending_and_resumes_as_records_are_decided(
    make_config, kafka_bootstrap, tmp_path
) -> None:
    texts, gold = dataset(30, "mp")
    mock = MockLLM(gold, labels=LABELS, latency_ms=300)
    url = mock.start_in_thread()
    config = make_config(reviewer={
        "mode": "llm", "cache_path": str(tmp_path / "cache.sqlite"), "max_pending": 5,
        "llm": {"base_url": url, "model": "mock", "batch_size": 1, "concurrency": 2},
    })
    config.kafka.consume_batch = 1  # take records one at a time, so the bound is checked between them
    reviewer = Reviewer(config)
    loop = ServiceLoop(config, "reviewer", reviewer, group_id=group(config), bootstrap=kafka_bootstrap)
    try:
        with running(loop), Highest(reviewer._pending_count) as held:
            send(config, kafka_bootstrap, "hard", hard_items(texts))
            assert wait_until(lambda: loop.paused, 20)  # the bound was reached
            labels = read_topic(config, kafka_bootstrap, "labels", lambda got: {m.record_id for m in got} >= set(texts))
    finally:
        mock.stop_thread()
    assert held.worst == 5  # never more than max_pending undecided records in memory
    assert Counter(m.record_id for m in labels) == Counter(set(texts))
    assert {m.record_id: m.label for m in labels} == gold.by_id
