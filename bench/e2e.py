"""End to end: records produced → the last one labelled, with an LLM that takes a second per request.

Every service runs as its own process (one replica each) on the embedded broker; mock-llm answers
each request after ``--llm-latency-ms`` (default 1000). The reviewer is a pipeline (``llm.batch_size``
records per request, ``llm.concurrency`` requests in flight, consumption going on meanwhile), so the
LLM's latency overlaps with everything else. ``e2e_llm_share`` is the share of the wall time during
which at least one LLM request was out.

    .venv/bin/python bench/e2e.py [--records 1000] [--store file://…/models --specialists a,b,c] [--save]

By default the specialists are two tiny ONNX models built on the spot (``tests/helpers/tiny_model``);
``--store``/``--specialists`` run the demo's specialists instead, from a store ``autoannotator demo``
built. Ends with ``RESULT e2e_wall_s=<…> e2e_llm_share=<…>``; ``--save`` writes ``results/e2e/result.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import parse_config
from autoannotator.mockllm import Gold, MockLLM
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import ensure_topics
from autoannotator.tools.audit import audit_topics

from tests.helpers.fleet import Fleet
from tests.helpers.kafka import send
from tests.helpers.pipeline import LABELS, OutcomeWatcher, gold_for, json_items, make_texts
from tests.helpers.tiny_model import build_tiny_artifact, build_tiny_hf_model


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--llm-latency-ms", type=float, default=1000.0)
    p.add_argument("--store", default=None, help="model store holding the specialists (default: tiny models)")
    p.add_argument("--specialists", default=None, help="comma-separated specialist names in --store")
    p.add_argument("--save", action="store_true", help="write results/e2e/result.json")
    return p.parse_args()


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def main() -> int:
    """Run once and print the RESULT line."""
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="aa-e2e-"))
    if args.store:
        if not args.specialists:
            raise SystemExit("--store needs --specialists")
        store_uri, names = args.store, args.specialists.split(",")
        kind = f"specialists {names} from {store_uri}"
    else:
        store = ModelStore(f"file://{root / 'store'}")
        first = build_tiny_artifact(root / "a1", model_dir=build_tiny_hf_model(root / "m1"))
        second = build_tiny_artifact(root / "a2", model_dir=build_tiny_hf_model(root / "m2", seed=7, train_steps=5))
        for name, artifact in (("s1", first), ("s2", second)):
            store.set_current(name, store.publish(name, artifact).version)
        store_uri, names = store.uri, ["s1", "s2"]
        kind = "two tiny ONNX specialists (not the demo's: pass --store/--specialists for those)"
    texts = make_texts(args.records, prefix="e2e")
    gold = Gold()
    for rid, label in gold_for(texts).items():
        gold.add(label, record_id=rid)
    mock = MockLLM(gold, labels=LABELS, latency_ms=args.llm_latency_ms)
    url = mock.start_in_thread()
    with EmbeddedBroker(log_path=root / "broker.log") as broker:
        config = parse_config({
            "task": {"name": "e2e", "labels": LABELS},
            "kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 6},
            "input": {"format": "json", "max_text_bytes": 2000},
            "store": {"uri": store_uri},
            "specialists": [{"name": n, "threads": 1, "max_wait_ms": 5} for n in names],
            "voter": {"policy": "vote", "eps": 0.3},
            "reviewer": {"llm": {"base_url": url, "model": "mock"}, "cache_path": str(root / "cache.sqlite")},
            "trainer": {"enabled": False},
            "data_dir": str(root / "data"),
        })
        ensure_topics(config.kafka, broker.bootstrap)
        watcher = OutcomeWatcher(config, broker.bootstrap)
        with Fleet(config, broker.bootstrap, root / "fleet") as fleet:
            for service in [f"specialist-{n}" for n in names] + ["voter", "reviewer"]:
                fleet.wait_assigned(fleet.add(service), 300)
            started = time.monotonic()
            send(config, broker.bootstrap, "texts", json_items(texts))
            watcher.wait_for(texts, 600)
            wall = time.monotonic() - started
        watcher.close()
        report = audit_topics(config, broker.bootstrap, timeout_s=10)
    mock.stop_thread()
    requests = [(r.started, r.answered) for r in mock.requests if r.answered]
    share = busy_time([(max(a, started), b) for a, b in requests]) / wall
    reviewed = report.labels_by_source.get("llm", 0)
    print(f"{args.records} records with {kind}; mock-llm at {args.llm_latency_ms:g} ms per request")
    print(f"wall {wall:.1f}s produce → last outcome; {len(requests)} LLM requests for {reviewed} reviewed records; "
          f"LLM busy {share:.0%} of the wall time; lost {len(report.lost)}, conflicting {len(report.conflicting)}")
    if args.save:
        out = Path("results/e2e")
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({
            "records": args.records, "specialists": kind, "llm_latency_ms": args.llm_latency_ms, "wall_s": wall,
            "llm_share": share, "llm_requests": len(requests), "reviewed": reviewed, "lost": len(report.lost),
            "conflicting": len(report.conflicting)}, indent=2) + "\n", encoding="utf-8")
    print(f"RESULT e2e_wall_s={wall:.1f} e2e_llm_share={share:.2f}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
