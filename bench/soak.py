"""Soak run: a few thousand records through the whole pipeline while services are killed with SIGKILL.

The pipeline runs as ``autoannotator up`` runs it (a Supervisor restarting crashed children):
two tiny ONNX specialists, the voter and the reviewer, on the embedded broker (Tansu, in memory),
with mock-llm injecting faults (429 with Retry-After, 500, timeouts, malformed JSON, labels outside
the set, missing ids). Records are sent in waves; every ``--kill-every-s`` seconds a random service
gets ``kill -9``. At the end ``audit`` accounts for every input id: lost, duplicated, conflicting.

    .venv/bin/python bench/soak.py [--records 5000] [--wave 250] [--kill-every-s 5] [--seed 1]

Prints a table and ends with ``RESULT soak_lost=<n> soak_duplicates=<n> soak_records=<n>``.
Run from the repository root (it reuses the test harness and tiny-model builder in ``tests/``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoannotator.config import PipelineConfig, parse_config
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import ensure_topics
from autoannotator.tools.audit import format_report
from evidence import Evidence  # bench/evidence.py (the script's folder is on the path)

from tests.helpers.pipeline import LABELS, PipelineRun, gold_for, json_items, make_texts, rss_kib
from tests.helpers.tiny_model import build_tiny_artifact, build_tiny_hf_model

FAULTS = {"429": 0.05, "500": 0.05, "timeout": 0.02, "malformed": 0.05, "bad_label": 0.05, "missing_id": 0.05}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=5000)
    p.add_argument("--wave", type=int, default=250, help="records sent at once")
    p.add_argument("--wave-gap-s", type=float, default=2.0)
    p.add_argument("--kill-every-s", type=float, default=5.0)
    p.add_argument("--timeout-s", type=float, default=420.0, help="wait for every outcome after the last wave")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--save", action="store_true",
                        help="write the full output (command, commit, date, machine) to results/soak/")
    return p.parse_args()


def main() -> int:
    """Run the soak and print the table and the RESULT line."""
    args = parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="aa-soak-"))
    started = time.monotonic()
    first = build_tiny_artifact(root / "a1", model_dir=build_tiny_hf_model(root / "m1"))
    second = build_tiny_artifact(root / "a2", model_dir=build_tiny_hf_model(root / "m2", seed=7, train_steps=5))
    print(f"tiny models built in {time.monotonic() - started:.0f}s", flush=True)
    texts = make_texts(args.records, prefix="soak")
    broker = EmbeddedBroker(log_path=root / "broker.log").start()

    def make_config(**sections: Any) -> PipelineConfig:
        doc: dict[str, Any] = {"task": {"name": "soak", "labels": list(LABELS)},
                               "kafka": {"bootstrap_servers": broker.bootstrap, "topic_prefix": "soak.",
                                         "partitions": 3, "session_timeout_ms": 3000}}
        doc.update(sections)
        config = parse_config(doc)
        ensure_topics(config.kafka, broker.bootstrap)
        return config

    run = PipelineRun(make_config, broker.bootstrap, root, {"s1": first, "s2": second}, gold=gold_for(texts),
                      mock_options={"fault_rates": FAULTS, "retry_after_s": 0.5, "hang_s": 8.0, "seed": args.seed},
                      sections={"reviewer": {"llm": {"batch_size": 10, "concurrency": 4}}})
    kills: Counter[str] = Counter()
    peak_rss: Counter[str] = Counter()
    stop = threading.Event()

    def killer() -> None:
        names = [*(f"specialist-{n}" for n in ("s1", "s2")), "voter", "reviewer"]
        while not stop.wait(args.kill_every_s * rng.uniform(0.5, 1.5)):
            name = rng.choice(names)
            try:
                run.kill9(name, timeout_s=30)
                kills[name] += 1
            except AssertionError as exc:
                print(f"kill of {name}: {exc}", flush=True)

    def sampler() -> None:
        while not stop.wait(1.0):
            for child in run.supervisor.children:
                if child.proc is not None:
                    peak_rss[child.name] = max(peak_rss[child.name], rss_kib(child.proc.pid))

    try:
        run.start()
        watcher = run.watcher()
        t0 = time.monotonic()
        threads = [threading.Thread(target=killer, daemon=True), threading.Thread(target=sampler, daemon=True)]
        for thread in threads:
            thread.start()
        items = json_items(texts)
        for i in range(0, len(items), args.wave):
            run.send(items[i:i + args.wave])
            watcher.poll()
            time.sleep(args.wave_gap_s)
        sent_s = time.monotonic() - t0
        try:
            watcher.wait_for(texts, args.timeout_s)
        except AssertionError as exc:
            print(f"not complete: {exc}", flush=True)
        stop.set()
        done_s = time.monotonic() - t0
        watcher.close()
        outcomes = Counter(r.outcome for r in run.mock.requests)
        report = run.audit()
    finally:
        stop.set()
        run.stop()
        broker.stop()
    restarts = {c.name: c.restarts for c in run.supervisor.children}
    print()
    print(f"{'service':<18}{'kill -9':>9}{'restarts':>10}{'peak RSS MiB':>14}")
    for name in restarts:
        print(f"{name:<18}{kills[name]:>9}{restarts[name]:>10}{peak_rss[name] / 1024:>14.0f}")
    print()
    print(f"{'records sent':<28}{len(texts):>10}")
    print(f"{'send time (s)':<28}{sent_s:>10.0f}")
    print(f"{'all outcomes after (s)':<28}{done_s:>10.0f}")
    print(f"{'LLM requests':<28}{sum(outcomes.values()):>10}")
    for outcome, n in sorted(outcomes.items()):
        print(f"{'  mock ' + outcome:<28}{n:>10}")
    print(format_report(report))
    print(f"RESULT soak_lost={len(report.lost)} soak_duplicates={report.duplicate_messages} "
          f"soak_records={report.inputs}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    with Evidence.from_argv("soak"):
        code = main()
    sys.exit(code)
