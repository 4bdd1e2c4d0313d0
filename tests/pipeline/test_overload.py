"""Overload: producers far faster than the specialists. Lag grows, specialist memory stays bounded, nothing is lost.

The loop consumes at most ``kafka.consume_batch`` messages per turn and the batcher closes batches
by a token budget, so a specialist holds a bounded amount of input whatever the backlog: the
backlog waits in Kafka. RSS of every specialist process is sampled from /proc while the backlog drains.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers.pipeline import (
    PipelineRun,
    gold_for,
    json_items,
    make_texts,
    rss_kib,
)

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

RECORDS = 3000
RSS_BOUND_MIB = 400  # a tiny-model specialist idles at about 120 MiB here (bench/soak.py's table)


def test_a_backlog_far_larger_than_a_batch_keeps_specialist_memory_bounded_and_loses_nothing(
        make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact):
    texts = make_texts(RECORDS, prefix="o")
    run = PipelineRun(make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact},
                      gold=gold_for(texts), sections={"kafka": {"consume_batch": 100},
                                                      "reviewer": {"llm": {"batch_size": 20, "concurrency": 4}}})
    peak: dict[str, int] = {}
    backlog: list[int] = []
    stop = threading.Event()
    with run:
        names = ["specialist-s1", "specialist-s2"]
        watcher = run.watcher()

        def sample() -> None:
            while not stop.wait(0.5):
                for name in names:
                    peak[name] = max(peak.get(name, 0), rss_kib(run.pid(name)))
                watcher.poll()
                backlog.append(RECORDS - len(watcher.seen))

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            run.send(json_items(texts))  # all at once: far faster than two specialists on two cores
            sampler.start()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and len(watcher.seen) < RECORDS:
                time.sleep(1)
        finally:
            stop.set()
            sampler.join(5)
            watcher.close()
    print(f"overload: peak RSS MiB {({k: v // 1024 for k, v in peak.items()})}, max backlog {max(backlog)}")
    assert max(backlog) > RECORDS // 2  # the pipeline really was behind
    assert all(kib / 1024 < RSS_BOUND_MIB for kib in peak.values()), peak
    report = run.audit()
    assert report.inputs == RECORDS
    assert report.lost == [] and report.conflicting == []
