"""Voter throughput on the embedded broker, against the same work done in memory.

Pre-fills ``predictions`` with N records x k=3 specialists (a mix of unanimous, 2-of-3 and
split records), then runs the real :class:`~autoannotator.voter.service.Voter` in the shared
service loop and times it from start to the last decision. The same messages are then pushed
through (a) the pure routing decision and (b) the whole processor (parse, join, decide, build
and serialise outputs) in memory, so the Kafka overhead shows as a ratio.

    .venv/bin/python bench/voter.py [--records 20000] [--partitions 6] [--profile]

Ends with ``RESULT voter_rps=<records per second through Kafka>``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import threading
import time
import uuid
from collections import defaultdict

from autoannotator.config import PipelineConfig, parse_config
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import ensure_topics, make_producer
from autoannotator.stream.loop import ServiceLoop
from autoannotator.v1.records_pb2 import Prediction, PredictionStatus, TextRecord
from autoannotator.voter.service import Voter
from autoannotator.wire import RawMessage
from evidence import Evidence  # bench/evidence.py (the script's folder is on the path)

LABELS = ["negative", "neutral", "positive"]
SPECIALISTS = ["s1", "s2", "s3"]


def make_config(bootstrap: str, partitions: int, consume_batch: int) -> PipelineConfig:
    """A config with fresh topics on the benchmark's broker."""
    return parse_config({
        "task": {"name": "bench", "labels": LABELS},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": f"b{uuid.uuid4().hex[:8]}.",
                  "partitions": partitions, "session_timeout_ms": 2000, "consume_batch": consume_batch},
        "specialists": [{"name": name} for name in SPECIALISTS],
        "voter": {"policy": "vote", "eps": 0.34, "quorum": 2, "join_timeout_s": 30},
    })


def make_predictions(records: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """(key, value) of k predictions per record, records interleaved as specialists would write them."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    for i in range(records):
        rid = f"rec-{i:08d}"
        base = rng.randrange(3)
        record = TextRecord(id=rid, text=f"some tweet number {i} about an airline that lost my bag", created_ms=1)
        for spec in SPECIALISTS:
            top = base if rng.random() < 0.8 else rng.randrange(3)
            probs = [0.1, 0.1, 0.1]
            probs[top] = 0.8
            msg = Prediction(record_id=rid, specialist=spec, model_version=f"{spec}-v3", probs=probs, labels=LABELS,
                             status=PredictionStatus.PREDICTION_STATUS_OK, record=record, latency_ms=3.2,
                             produced_ms=1_700_000_000_000, source_topic="aa.texts", source_partition=i % 6,
                             source_offset=i)
            out.append((rid, msg.SerializeToString()))
    return out


class NullOutbox:
    """Serialises outputs like the real outbox, then drops them (the in-memory baseline)."""

    def __init__(self) -> None:
        self.sent = 0
        self.bytes = 0

    def send(self, topic: str, key: str | bytes | None, value: object) -> None:
        """Serialise and count."""
        self.bytes += len(value.SerializeToString())  # type: ignore[attr-defined]
        self.sent += 1

    def poll(self) -> None:
        """Nothing to serve."""


def in_memory(config: PipelineConfig, messages: list[tuple[str, bytes]], partitions: int) -> tuple[float, float]:
    """Seconds for (decide only, whole processor) over the messages, without Kafka."""
    by_record: dict[str, list[Prediction]] = defaultdict(list)
    for key, value in messages:
        by_record[key].append(Prediction.FromString(value))
    voter = Voter(config)
    groups = list(by_record.values())
    started = time.perf_counter()
    for group in groups:
        voter.router.decide(group)
    decide_s = time.perf_counter() - started

    raw = [RawMessage("predictions", hash(key) % partitions, offset, key.encode(), value, 0)
           for offset, (key, value) in enumerate(messages)]
    voter = Voter(config)
    outbox = NullOutbox()
    started = time.perf_counter()
    for i in range(0, len(raw), config.kafka.consume_batch):
        voter.handle(raw[i:i + config.kafka.consume_batch], outbox)  # type: ignore[arg-type]
    processor_s = time.perf_counter() - started
    assert voter.decided == len(groups), (voter.decided, len(groups))
    return decide_s, processor_s


def through_kafka(config: PipelineConfig, bootstrap: str, records: int, profile: bool) -> tuple[float, float]:
    """Seconds from loop start to the last decision acknowledged, and from the first consumed batch to it."""
    voter = Voter(config)
    first_batch: list[float] = []
    original = voter.handle

    def timed_handle(batch, out):  # type: ignore[no-untyped-def]
        if not first_batch:
            first_batch.append(time.perf_counter())
        original(batch, out)

    voter.handle = timed_handle  # type: ignore[method-assign]
    loop = ServiceLoop(config, "voter", voter, bootstrap=bootstrap, create_topics=False)
    profiler = cProfile.Profile() if profile else None

    def run() -> None:
        if profiler:
            profiler.enable()
        loop.run()
        if profiler:
            profiler.disable()

    thread = threading.Thread(target=run, daemon=True)
    started = time.perf_counter()
    thread.start()
    # The last decision counts once the loop has flushed and committed it (produced resets to 0).
    while voter.decided < records or loop.checkpoint.produced:
        time.sleep(0.002)
        if not thread.is_alive():
            raise RuntimeError("the voter loop died")
    done = time.perf_counter()
    loop.stop()
    thread.join(30)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return done - started, done - first_batch[0]


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--consume-batch", type=int, default=500)
    parser.add_argument("--profile", action="store_true", help="cProfile the voter loop thread")
    parser.add_argument("--save", action="store_true",
                        help="write the full output (command, commit, date, machine) to results/voter/")
    args = parser.parse_args()

    messages = make_predictions(args.records)
    with EmbeddedBroker() as broker:
        config = make_config(broker.bootstrap, args.partitions, args.consume_batch)
        ensure_topics(config.kafka, broker.bootstrap)
        producer = make_producer(config.kafka, broker.bootstrap)
        topic = config.kafka.topic("predictions")
        for key, value in messages:
            while True:
                try:
                    producer.produce(topic, value, key=key)
                    break
                except BufferError:
                    producer.poll(0.05)
        if producer.flush(60):
            raise RuntimeError("pre-fill not acknowledged")
        del producer  # closed before the broker stops, or librdkafka logs refused reconnects
        total_s, busy_s = through_kafka(config, broker.bootstrap, args.records, args.profile)
    decide_s, processor_s = in_memory(config, messages, args.partitions)

    n, k = args.records, len(SPECIALISTS)
    rows = [
        ("kafka, start to last decision", total_s),
        ("kafka, first batch to last decision", busy_s),
        ("in memory: processor (parse+join+decide+encode)", processor_s),
        ("in memory: decision function only", decide_s),
    ]
    print(f"\nvoter benchmark: {n} records x k={k} = {n * k} predictions, {args.partitions} partitions, "
          f"consume_batch {args.consume_batch}")
    print(f"{'path':<50} {'seconds':>8} {'records/s':>11} {'predictions/s':>14} {'vs kafka':>9}")
    for name, seconds in rows:
        print(f"{name:<50} {seconds:>8.3f} {n / seconds:>11.0f} {n * k / seconds:>14.0f} {total_s / seconds:>8.1f}x")
    print(f"RESULT voter_rps={n / total_s:.0f}")


if __name__ == "__main__":
    with Evidence.from_argv("voter"):
        main()
