"""Scale-out: records through 1 and then 2 replicas of every service, replicas killed and restarted.

Two tiny ONNX specialists, the voter and the reviewer (mock-llm), each as separate processes on the
embedded broker over 6 partitions (``tests/helpers/fleet.py``). First one replica of each; then two
of each, with a replica killed (SIGKILL) and a new one started every ``--kill-every-s`` seconds,
the services in turn, each a rebalance of its group (bursts of partitions assigned or revoked,
counted from the replicas' logs while records flow). Both phases time produce → last outcome; the second is
audited (every input id labelled or rejected once, after de-duplication by id) and its topics
weighed (bytes of keys and values on the broker per input record).

    .venv/bin/python bench/scaleout.py [--records 10000] [--kill-every-s 3] [--save]

Ends with ``RESULT scaleout_lost=<n> scaleout_conflicts=<n> scaleout_rebalances=<n>
scaleout_bytes_per_record=<…>``. ``--save`` writes ``results/scaleout/result.json``. Run from the
repository root (it reuses the test harness in ``tests/``). On 2 cores expect the throughput ratio
to show overhead (twice the processes on the same cores), not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.mockllm import Gold, MockLLM
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import ensure_topics
from autoannotator.stream.reader import TopicReader
from autoannotator.tools.audit import audit_topics, format_report
from autoannotator.wire import TOPICS

from tests.helpers.fleet import Fleet
from tests.helpers.kafka import send
from tests.helpers.pipeline import LABELS, OutcomeWatcher, gold_for, json_items, make_texts
from tests.helpers.tiny_model import build_tiny_artifact, build_tiny_hf_model

SERVICES = ("specialist-s1", "specialist-s2", "voter", "reviewer")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--kill-every-s", type=float, default=3.0)
    p.add_argument("--timeout-s", type=float, default=900.0, help="longest wait for every outcome, per phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--save", action="store_true", help="write results/scaleout/result.json")
    return p.parse_args()


def make_config(bootstrap: str, root: Path, store_uri: str, llm_url: str, prefix: str) -> PipelineConfig:
    """The pipeline of one phase (its own topics)."""
    config = parse_config({
        "task": {"name": "scaleout", "labels": LABELS},
        "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "partitions": 6,
                  "session_timeout_ms": 3000, "assignment_strategy": "cooperative-sticky"},
        "input": {"format": "json", "max_text_bytes": 2000},
        "store": {"uri": store_uri},
        "specialists": [{"name": n, "threads": 1, "max_wait_ms": 5} for n in ("s1", "s2")],
        "voter": {"policy": "vote", "eps": 0.3, "join_timeout_s": 30},
        "reviewer": {"llm": {"base_url": llm_url, "model": "mock", "batch_size": 10, "concurrency": 8,
                             "backoff_initial_s": 0.1, "backoff_max_s": 1.0},
                     "cache_path": str(root / f"{prefix}cache.sqlite")},
        "trainer": {"enabled": False},
        "data_dir": str(root / "data"),
    })
    ensure_topics(config.kafka, bootstrap)
    return config


def run_phase(config: PipelineConfig, bootstrap: str, root: Path, texts: dict[str, str], replicas: int,
              kill_every_s: float | None, timeout_s: float, rng: random.Random) -> dict:
    """Run one phase; returns its timings, kills and (with kills) rebalances."""
    watcher = OutcomeWatcher(config, bootstrap)
    kills: list[str] = []
    stop = threading.Event()
    with Fleet(config, bootstrap, root) as fleet:
        names = [fleet.add(service) for service in SERVICES for _ in range(replicas)]
        for name in names:
            fleet.wait_assigned(name, 300)
        since = time.time()  # the groups formed before this; what follows is a rebalance
        started = time.monotonic()
        send(config, bootstrap, "texts", json_items(texts))
        produced = time.monotonic() - started
        print(f"  {len(texts)} records produced in {produced:.1f}s", flush=True)

        def killer() -> None:
            turn = 0
            while not stop.wait(kill_every_s):
                # Services in turn (each kill a rebalance of another group), a random replica of each.
                service = SERVICES[turn % len(SERVICES)]
                turn += 1
                victim = rng.choice([n for n in fleet.alive() if n.split("#")[0] == service])
                fleet.kill9(victim)
                kills.append(victim)
                fleet.add(victim.split("#")[0])

        thread = threading.Thread(target=killer, daemon=True) if kill_every_s else None
        if thread is not None:
            thread.start()
        try:
            watcher.wait_for(texts, timeout_s)
        finally:
            stop.set()
            if thread is not None:
                thread.join(30)
            watcher.close()
        wall = time.monotonic() - started
        until = time.time()  # what follows (the graceful stop) revokes everything: not counted
        rebalances = sum(fleet.rebalances(service, since, until) for service in SERVICES)
    return {"replicas": replicas, "wall_s": wall, "records_per_s": len(texts) / wall, "kills": kills,
            "rebalances": rebalances}


def broker_bytes(config: PipelineConfig, bootstrap: str) -> dict[str, int]:
    """Bytes of keys and values on every topic of a phase."""
    sizes = {}
    for topic in TOPICS:
        with TopicReader(config.kafka, bootstrap, topic) as reader:
            sizes[topic] = sum(len(m.key or b"") + len(m.value or b"") for m in reader.drain(60))
    return sizes


def main() -> int:
    """Run both phases and print the comparison and the RESULT line."""
    args = parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="aa-scaleout-"))
    store = ModelStore(f"file://{root / 'store'}")
    first = build_tiny_artifact(root / "a1", model_dir=build_tiny_hf_model(root / "m1"))
    second = build_tiny_artifact(root / "a2", model_dir=build_tiny_hf_model(root / "m2", seed=7, train_steps=5))
    for name, artifact in (("s1", first), ("s2", second)):
        store.set_current(name, store.publish(name, artifact).version)
    texts = make_texts(args.records, prefix="so")
    gold = Gold()
    for rid, label in gold_for(texts).items():
        gold.add(label, record_id=rid)
    mock = MockLLM(gold, labels=LABELS, latency_ms=20)
    url = mock.start_in_thread()
    results = {}
    with EmbeddedBroker(log_path=root / "broker.log") as broker:
        for phase, replicas, kill_every in (("one", 1, None), ("two", 2, args.kill_every_s)):
            print(f"phase {phase}: {replicas} replica(s) of {', '.join(SERVICES)}", flush=True)
            config = make_config(broker.bootstrap, root, store.uri, url, f"{phase}.")
            results[phase] = run_phase(config, broker.bootstrap, root / phase, texts, replicas, kill_every,
                                       args.timeout_s, rng)
            print(f"  done in {results[phase]['wall_s']:.1f}s: {results[phase]['records_per_s']:.1f} records/s",
                  flush=True)
        report = audit_topics(config, broker.bootstrap, timeout_s=10)
        sizes = broker_bytes(config, broker.bootstrap)
    mock.stop_thread()
    two = results["two"]
    rebalances = two["rebalances"]
    per_record = sum(sizes.values()) / args.records
    ratio = two["records_per_s"] / results["one"]["records_per_s"]
    print(format_report(report))
    print(f"throughput: 1 replica {results['one']['records_per_s']:.1f} records/s, 2 replicas "
          f"{two['records_per_s']:.1f} records/s (ratio {ratio:.2f}); kills {len(two['kills'])}: {two['kills']}")
    print("bytes on the broker per record: " + ", ".join(f"{t} {b / args.records:.0f}" for t, b in sizes.items())
          + f"; total {per_record:.0f}")
    summary = {"records": args.records, "phases": results, "ratio": ratio, "lost": len(report.lost),
               "conflicts": len(report.conflicting), "duplicates": report.duplicate_messages,
               "rebalances": rebalances, "bytes_per_record": per_record,
               "bytes_by_topic": {t: b / args.records for t, b in sizes.items()}}
    if args.save:
        out = Path("results/scaleout")
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"RESULT scaleout_lost={len(report.lost)} scaleout_conflicts={len(report.conflicting)} "
          f"scaleout_rebalances={rebalances} scaleout_bytes_per_record={per_record:.0f}")
    return 0 if report.ok and rebalances >= 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
