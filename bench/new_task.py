"""A new task from zero, through documented commands only: both routes of "Your own task".

The task is the packaged ``insults`` corpus (binary: neutral / insult), with ``mock-llm`` as the
reviewer (gold label with probability 0.9). Every step is an ``autoannotator`` command run as a
child process.

1. **Labelled file.** 300 labelled rows train the specialists; 2,000 other rows are streamed:

       autoannotator plan --own --task ... --labels neutral,insult --out pipeline.yaml
       autoannotator train --config pipeline.yaml --data train.csv
       autoannotator mock-llm --gold gold.csv --labels neutral,insult --accuracy 0.9 --port P
       autoannotator up --config pipeline.yaml            (AUTOANNOTATOR_LLM_URL points at the mock)
       autoannotator produce stream.csv --config pipeline.yaml
       autoannotator audit --config pipeline.yaml --json  (until every id is decided)
       autoannotator tail labels|predictions --config pipeline.yaml

2. **Cold start.** No labelled rows: ``plan --own --beta B``, then ``up`` with an empty model
   store, and the same 2,000 rows produced as a paced stream (``--chunk`` rows every
   ``--chunk-seconds``, each chunk a ``produce`` of its own): the reviewer labels everything until
   the trainer's first round (after B reviewed records) builds the specialists from the packaged
   MiniLM; then error-bounded routing takes over.

Between plan and the rest the bench sets what any deployment sets: where the topics, the model
store and the service state live (``kafka.topic_prefix``, ``store.uri``, ``data_dir`` ...), and
the error it accepts: ``voter.target_error`` (``--target-error``, 0.2). The bound is measured
against the reviewer's labels, so a target below the reviewer's own error rate (0.1 here) can
never be certified and every record would go to the LLM.

Prints ``RESULT newtask_acc=... newtask_best_specialist=... newtask_share=... newtask_lost=...
coldstart_share_first=... coldstart_share_last=...``: for route 1, final-label accuracy against
gold, the best single specialist's accuracy on the same stream (from the ``predictions`` topic),
the share of records labelled by the LLM and lost ids (audit); for route 2, the share of records
labelled by the LLM among the first and the last ``--window`` records of the stream.

    .venv/bin/python bench/new_task.py [--steps 100] [--part all|train|cold] [--save]
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
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml
from autoannotator.demo.datasets import INSULT_LABELS, Example, load_insults
from autoannotator.mockllm.process import MockLLMProcess, MockLLMStartError
from evidence import commit  # bench/evidence.py (the script's folder is on the path)

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
    p.add_argument("--target-error", type=float, default=0.2, help="voter.target_error of both routes")
    p.add_argument("--part", choices=["all", "train", "cold"], default="all", help="which route(s) to run")
    p.add_argument("--cold-beta", type=int, default=300, help="cold start: plan --beta (reviewed records per round)")
    p.add_argument("--cold-steps", type=int, default=100, help="cold start: trainer.cold_start.steps")
    p.add_argument("--chunk", type=int, default=100, help="cold start: rows per produce")
    p.add_argument("--chunk-seconds", type=float, default=40.0, help="cold start: one chunk per this many seconds")
    p.add_argument("--window", type=int, default=500, help="cold start: first/last records compared")
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


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def plan_config(args: argparse.Namespace, work: Path, beta: int | None = None) -> Path:
    """``plan --own`` into ``work``, then the deployment's own settings (topics, store, state, target error)."""
    config_path = work / "pipeline.yaml"
    extra = ["--beta", str(beta)] if beta else []
    cli("plan", "--own", "--task", TASK, "--labels", ",".join(INSULT_LABELS), "--name", "insults", "--k", str(args.k),
        *extra, "--out", str(config_path), log=work / "commands.log")
    doc = yaml.safe_load(config_path.read_text())
    doc["kafka"] = {"topic_prefix": f"nt{time.time_ns()}.", "partitions": 3, "session_timeout_ms": 3000}
    doc["store"] = {"uri": f"file://{work / 'models'}"}
    doc["data_dir"] = str(work / "state")
    doc["reviewer"]["cache_path"] = str(work / "state" / "llm-cache.sqlite")
    doc["reviewer"]["human"] = {"queue_path": str(work / "state" / "review-queue.sqlite")}
    doc["trainer"]["pool_path"] = str(work / "state" / "pool.sqlite")
    doc["trainer"]["cold_start"] = {"steps": args.cold_steps}
    doc["voter"]["target_error"] = args.target_error
    for spec in doc["specialists"]:
        spec["max_length"] = args.max_length
    config_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config_path


class Pipeline:
    """``mock-llm`` and ``up`` as child processes for one config; ``audit`` and ``tail`` read the outcome."""

    def __init__(self, args: argparse.Namespace, work: Path, config_path: Path) -> None:
        self.work, self.config_path, self.log = work, config_path, work / "commands.log"
        try:
            self.mock = MockLLMProcess(work / "gold.csv", INSULT_LABELS, args.llm_accuracy, 0.0, work / "mock-llm.log")
        except MockLLMStartError as exc:
            sys.exit(str(exc))
        self.env = {**os.environ, "AUTOANNOTATOR_LLM_URL": self.mock.url}
        self._up_log = (work / "up.log").open("ab")
        self.up = subprocess.Popen(
            [sys.executable, "-m", "autoannotator.cli", "up", "--config", str(config_path),
             "--metrics-base-port", "0"], stdout=self._up_log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 120
        while not (work / "state" / "broker.json").exists():
            if time.monotonic() > deadline or self.up.poll() is not None:
                self.stop()
                sys.exit(f"`autoannotator up` did not start (see {work / 'up.log'})")
            time.sleep(0.5)

    def produce(self, path: Path) -> None:
        cli("produce", str(path), "--config", str(self.config_path), "--no-progress", log=self.log)

    def audit(self) -> dict:
        return json.loads(cli("audit", "--config", str(self.config_path), "--json", env=self.env))

    def wait_decided(self, expected: int, timeout_s: float) -> dict:
        """Audit until ``expected`` ids are decided and none is lost (or the time is up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            report = self.audit()
            decided = report["labelled"] + report["rejected"]
            print(f"    decided {decided}/{expected} (lost so far {report['lost']}, in review "
                  f"{report['in_review']})", flush=True)
            if (report["lost"] == 0 and decided >= expected) or time.monotonic() > deadline \
                    or self.up.poll() is not None:
                return report
            time.sleep(5)

    def tail(self, topic: str) -> list[dict]:
        return [json.loads(line) for line in cli("tail", topic, "--config", str(self.config_path)).splitlines()]

    def stop(self) -> None:
        stop(self.up)
        self.mock.stop()
        self._up_log.close()


def final_labels(labels: list[dict]) -> dict[str, tuple[str, str]]:
    """Record id -> (label, source) of its latest label message."""
    final: dict[str, tuple[str, str]] = {}
    for msg in labels:
        value = msg.get("value", {})
        final[msg["key"]] = (value.get("label", ""), value.get("source", ""))
    return final


def route_train(args: argparse.Namespace, work: Path, train: list[Example], stream: list[Example]) -> dict:
    """Route 1: plan, train on the labelled rows, stream, audit."""
    gold = {e.id: e.label for e in stream}
    write_rows(work / "train.csv", train, ("text", "label"))
    write_rows(work / "stream.csv", stream, ("id", "text"))
    write_rows(work / "gold.csv", stream, ("id", "text", "label"))
    config_path = plan_config(args, work)
    t0 = time.monotonic()
    cli("train", "--config", str(config_path), "--data", str(work / "train.csv"), "--k", str(args.k),
        "--steps", str(args.steps), "--max-length", str(args.max_length), "--seed", str(args.seed),
        log=work / "commands.log")
    train_s = time.monotonic() - t0
    cli("check-config", "--config", str(config_path), "--quiet", log=work / "commands.log")
    pipeline = Pipeline(args, work, config_path)
    try:
        t1 = time.monotonic()
        pipeline.produce(work / "stream.csv")
        report = pipeline.wait_decided(len(stream), args.timeout)
        stream_s = time.monotonic() - t1
        final = final_labels(pipeline.tail("labels"))
        predictions = pipeline.tail("predictions")
    finally:
        pipeline.stop()
    correct = sum(1 for rid, (label, _) in final.items() if gold.get(rid) == label)
    llm = sum(1 for _, source in final.values() if source == "LABEL_SOURCE_LLM")
    by_specialist: dict[str, dict[str, bool]] = defaultdict(dict)
    for msg in predictions:
        value = msg.get("value", {})
        probs, names = value.get("probs") or [], value.get("labels") or INSULT_LABELS
        if probs and msg["key"] in gold:
            by_specialist[value["specialist"]][msg["key"]] = names[probs.index(max(probs))] == gold[msg["key"]]
    per_specialist = {name: sum(hits.values()) / len(gold) for name, hits in sorted(by_specialist.items())}
    print(f"route 1: labelled {len(final)} of {len(gold)}; audit {json.dumps(report)}\n"
          f"  per-specialist accuracy on the stream: {json.dumps({k: round(v, 4) for k, v in per_specialist.items()})}"
          f"\n  train {train_s:.0f}s, stream {stream_s:.0f}s", flush=True)
    return {"newtask_acc": correct / len(gold),
            "newtask_best_specialist": max(per_specialist.values(), default=0.0),
            "newtask_share": llm / max(1, len(final)), "newtask_lost": report.get("lost", len(gold))}


def route_cold(args: argparse.Namespace, work: Path, stream: list[Example]) -> dict:
    """Route 2: plan, up with an empty store, a paced stream; the LLM share at its start and end."""
    write_rows(work / "gold.csv", stream, ("id", "text", "label"))
    config_path = plan_config(args, work, beta=args.cold_beta)
    pipeline = Pipeline(args, work, config_path)
    rounds: list[str] = []
    seen: set[str] = set()
    try:
        t1 = time.monotonic()
        for i in range(0, len(stream), args.chunk):
            began = time.monotonic()
            chunk = write_rows(work / f"chunk-{i:05d}.csv", stream[i: i + args.chunk], ("id", "text"))
            pipeline.produce(chunk)
            new = sorted({p.parent.name for p in (work / "models").glob("*/v0001") if p.is_dir()} - seen)
            if new:
                seen.update(new)
                rounds.extend(f"{name}: first version in the store after {i + args.chunk} rows produced "
                              f"({time.monotonic() - t1:.0f}s)" for name in new)
                print("  " + "; ".join(rounds[-len(new):]), flush=True)
            time.sleep(max(0.0, args.chunk_seconds - (time.monotonic() - began)))
        report = pipeline.wait_decided(len(stream), args.timeout)
        stream_s = time.monotonic() - t1
        final = final_labels(pipeline.tail("labels"))
    finally:
        pipeline.stop()
    order = [e.id for e in stream]

    def share(ids: list[str]) -> float:
        sources = [final[rid][1] for rid in ids if rid in final]
        return sum(1 for s in sources if s == "LABEL_SOURCE_LLM") / max(1, len(sources))

    gold = {e.id: e.label for e in stream}
    acc = sum(1 for rid, (label, _) in final.items() if gold.get(rid) == label) / len(gold)
    window = min(args.window, len(order) // 2)
    print(f"route 2 (cold start): labelled {len(final)} of {len(stream)} in {stream_s:.0f}s; accuracy {acc:.4f}; "
          f"audit {json.dumps(report)}" + "".join(f"\n  {line}" for line in rounds), flush=True)
    return {"coldstart_share_first": share(order[:window]), "coldstart_share_last": share(order[-window:]),
            "coldstart_acc": acc, "coldstart_lost": report.get("lost", len(stream))}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = (args.work or Path(tempfile.mkdtemp(prefix="aa-newtask-"))).resolve()
    started = time.monotonic()
    examples = load_insults()
    random.Random(args.seed).shuffle(examples)
    train, stream = examples[: args.train_rows], examples[args.train_rows: args.train_rows + args.stream_rows]
    print(f"new task: insults ({len(train)} labelled rows, {len(stream)} streamed); work {work}", flush=True)
    results: dict[str, float] = {}
    if args.part in ("all", "train"):
        (work / "train").mkdir(parents=True, exist_ok=True)
        results.update(route_train(args, work / "train", train, stream))
    if args.part in ("all", "cold"):
        (work / "cold").mkdir(parents=True, exist_ok=True)
        results.update(route_cold(args, work / "cold", stream))
    settings = (f"{args.k} specialists x {args.steps} steps (cold start: {args.cold_steps} steps, beta "
                f"{args.cold_beta}, {args.chunk} rows every {args.chunk_seconds:.0f}s), max_length {args.max_length}, "
                f"target_error {args.target_error}, mock-llm accuracy {args.llm_accuracy}; "
                f"total {time.monotonic() - started:.0f}s")
    keys = ("newtask_acc", "newtask_best_specialist", "newtask_share", "newtask_lost", "coldstart_share_first",
            "coldstart_share_last")
    result = "RESULT " + " ".join(f"{k}={results[k]:.4f}" if isinstance(results[k], float) else f"{k}={results[k]}"
                                  for k in keys if k in results)
    lines = [settings, result]
    print("\n".join(lines), flush=True)
    if args.save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        # One route alone is saved beside the full run, never over it.
        stem = "new_task" if args.part == "all" else f"new_task-{args.part}"
        command = " ".join(["PYTHONPATH=services", ".venv/bin/python", "bench/new_task.py", *(argv or sys.argv[1:])])
        (RESULTS / f"{stem}.txt").write_text(f"# {command}   (commit {commit()}, {time.strftime('%Y-%m-%d')})\n"
                                             + "\n".join(lines) + "\n")
        logs = [(work / part / "commands.log") for part in ("train", "cold")]
        (RESULTS / f"{stem}-commands.log" if args.part != "all" else RESULTS / "commands.log").write_text(
            "".join(p.read_text() for p in logs if p.exists()))
        print(f"saved {RESULTS / (stem + '.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
