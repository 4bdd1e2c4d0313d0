"""A new task from zero, through documented commands only: plan -> train -> up -> produce -> audit.

Issue 14, part 1 (the labelled-file route; the cold start comes later). The task is the packaged
``insults`` corpus (binary: neutral / insult). 300 labelled rows train the specialists; 2,000
other rows are streamed through the running pipeline with ``mock-llm`` as the reviewer (gold label
with probability 0.9). Every step is an ``autoannotator`` command run as a child process:

    autoannotator plan --own --task ... --labels neutral,insult --out pipeline.yaml
    autoannotator train --config pipeline.yaml --data train.csv
    autoannotator mock-llm --gold gold.csv --labels neutral,insult --accuracy 0.9 --port P
    autoannotator up --config pipeline.yaml            (AUTOANNOTATOR_LLM_URL points at the mock)
    autoannotator produce stream.csv --config pipeline.yaml
    autoannotator audit --config pipeline.yaml --json  (until every id is decided)
    autoannotator tail labels|predictions --config pipeline.yaml

Between plan and train the bench sets what any deployment sets: where the topics, the model
store and the service state live (``kafka.topic_prefix``, ``store.uri``, ``data_dir`` ...).

Prints ``RESULT newtask_acc=... newtask_best_specialist=... newtask_share=... newtask_lost=...``:
final-label accuracy against gold, the best single specialist's accuracy on the same stream
(from the ``predictions`` topic), the share of records labelled by the LLM, and lost ids (audit).

    .venv/bin/python bench/new_task.py [--steps 100] [--save]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml
from autoannotator.demo.datasets import INSULT_LABELS, Example, load_insults
from autoannotator.stream.broker import free_port

TASK = "Is this comment an insult directed at a participant of the conversation?"
RESULTS = Path(__file__).resolve().parent.parent / "results" / "new_task"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-rows", type=int, default=300)
    p.add_argument("--stream-rows", type=int, default=2000)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="train: optimiser steps per specialist")
    p.add_argument("--max-length", type=int, default=96)
    p.add_argument("--llm-accuracy", type=float, default=0.9)
    p.add_argument("--timeout", type=float, default=1200, help="seconds to wait for every record's outcome")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--save", action="store_true", help=f"write the output and figures under {RESULTS}")
    return p.parse_args(argv)


def cli(*argv: str, env: dict[str, str] | None = None, log: Path | None = None) -> str:
    """Run one documented command; its stdout, or exit with its stderr when it fails."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "autoannotator.cli", *argv], capture_output=True, text=True,
                          env=env or dict(os.environ))
    if log is not None:
        with log.open("a") as fh:
            fh.write(f"$ autoannotator {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    print(f"  autoannotator {argv[0]}: exit {done.returncode} in {time.monotonic() - started:.0f}s", flush=True)
    if done.returncode not in (0, 1):
        sys.exit(f"autoannotator {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def write_rows(path: Path, rows: list[Example], fields: Sequence[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(fields)
        for e in rows:
            writer.writerow([getattr(e, f) for f in fields])
    return path


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer within {timeout_s}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="aa-newtask-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    started = time.monotonic()
    examples = load_insults()
    random.Random(args.seed).shuffle(examples)
    train, stream = examples[: args.train_rows], examples[args.train_rows: args.train_rows + args.stream_rows]
    gold = {e.id: e.label for e in stream}
    write_rows(work / "train.csv", train, ("text", "label"))
    write_rows(work / "stream.csv", stream, ("id", "text"))
    write_rows(work / "gold.csv", stream, ("id", "text", "label"))
    print(f"new task: insults ({len(train)} labelled rows, {len(stream)} streamed); work {work}", flush=True)

    config_path = work / "pipeline.yaml"
    cli("plan", "--own", "--task", TASK, "--labels", ",".join(INSULT_LABELS), "--name", "insults",
        "--out", str(config_path), log=log)
    doc = yaml.safe_load(config_path.read_text())
    doc["kafka"] = {"topic_prefix": f"nt{int(time.time())}.", "partitions": 3, "session_timeout_ms": 3000}
    doc["store"] = {"uri": f"file://{work / 'models'}"}
    doc["data_dir"] = str(work / "state")
    doc["reviewer"]["cache_path"] = str(work / "state" / "llm-cache.sqlite")
    doc["reviewer"]["human"] = {"queue_path": str(work / "state" / "review-queue.sqlite")}
    doc["trainer"]["pool_path"] = str(work / "state" / "pool.sqlite")
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))

    t0 = time.monotonic()
    cli("train", "--config", str(config_path), "--data", str(work / "train.csv"), "--k", str(args.k),
        "--steps", str(args.steps), "--max-length", str(args.max_length), "--seed", str(args.seed), log=log)
    train_s = time.monotonic() - t0
    cli("check-config", "--config", str(config_path), "--quiet", log=log)
    config = yaml.safe_load(config_path.read_text())
    for spec in config["specialists"]:
        spec["max_length"] = args.max_length
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    port = free_port()
    env = {**os.environ, "AUTOANNOTATOR_LLM_URL": f"http://127.0.0.1:{port}/v1"}
    logs = (work / "mock-llm.log").open("ab"), (work / "up.log").open("ab")
    mock = subprocess.Popen([sys.executable, "-m", "autoannotator.cli", "mock-llm", "--gold", str(work / "gold.csv"),
                             "--labels", ",".join(INSULT_LABELS), "--accuracy", str(args.llm_accuracy),
                             "--port", str(port)], stdout=logs[0], stderr=subprocess.STDOUT)
    up = subprocess.Popen([sys.executable, "-m", "autoannotator.cli", "up", "--config", str(config_path),
                           "--metrics-base-port", str(free_port())], stdout=logs[1], stderr=subprocess.STDOUT,
                          env=env)
    report: dict = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 60)
        deadline = time.monotonic() + 120
        while not (work / "state" / "broker.json").exists():
            if time.monotonic() > deadline or up.poll() is not None:
                sys.exit(f"`autoannotator up` did not start (see {work / 'up.log'})")
            time.sleep(0.5)
        t1 = time.monotonic()
        cli("produce", str(work / "stream.csv"), "--config", str(config_path), "--no-progress", log=log)
        deadline = time.monotonic() + args.timeout
        while True:
            report = json.loads(cli("audit", "--config", str(config_path), "--json", env=env))
            decided = report["labelled"] + report["rejected"]
            print(f"    decided {decided}/{len(stream)} (lost so far {report['lost']}, in review "
                  f"{report['in_review']})", flush=True)
            if report["lost"] == 0 or time.monotonic() > deadline or up.poll() is not None:
                break
            time.sleep(10)
        stream_s = time.monotonic() - t1
        labels = [json.loads(line) for line in cli("tail", "labels", "--config", str(config_path)).splitlines()]
        predictions = [json.loads(line)
                       for line in cli("tail", "predictions", "--config", str(config_path)).splitlines()]
    finally:
        stop(up)
        stop(mock)
        for fh in logs:
            fh.close()

    final: dict[str, tuple[str, str]] = {}
    for msg in labels:
        value = msg.get("value", {})
        final[msg["key"]] = (value.get("label", ""), value.get("source", ""))
    correct = sum(1 for rid, (label, _) in final.items() if gold.get(rid) == label)
    llm = sum(1 for _, source in final.values() if source == "LABEL_SOURCE_LLM")
    by_specialist: dict[str, dict[str, bool]] = defaultdict(dict)
    for msg in predictions:
        value = msg.get("value", {})
        probs, names = value.get("probs") or [], value.get("labels") or INSULT_LABELS
        if probs and msg["key"] in gold:
            by_specialist[value["specialist"]][msg["key"]] = names[probs.index(max(probs))] == gold[msg["key"]]
    per_specialist = {name: sum(hits.values()) / len(gold) for name, hits in sorted(by_specialist.items())}
    acc = correct / len(gold)
    share = llm / max(1, len(final))
    lines = [
        f"labelled {len(final)} of {len(gold)} streamed records; audit: {json.dumps(report)}",
        f"per-specialist accuracy on the stream: {json.dumps({k: round(v, 4) for k, v in per_specialist.items()})}",
        f"train {train_s:.0f}s, stream {stream_s:.0f}s, total {time.monotonic() - started:.0f}s; "
        f"{args.k} specialists x {args.steps} steps, max_length {args.max_length}, mock-llm accuracy "
        f"{args.llm_accuracy}",
        f"RESULT newtask_acc={acc:.4f} newtask_best_specialist={max(per_specialist.values(), default=0.0):.4f} "
        f"newtask_share={share:.4f} newtask_lost={report.get('lost', len(gold))}",
    ]
    print("\n".join(lines), flush=True)
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "new_task.txt").write_text("\n".join(lines) + "\n")
        (RESULTS / "commands.log").write_text(log.read_text())
        print(f"saved {RESULTS / 'new_task.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
