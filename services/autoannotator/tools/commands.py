"""Operator sub-commands: ``broker``, ``produce``, ``tail``, ``up``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from autoannotator.config import dump_config, load_config
from autoannotator.exceptions import ConfigError
from autoannotator.runtime import bootstrap_for, broker_file
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import ensure_topics
from autoannotator.stream.reader import TopicReader
from autoannotator.supervisor import Supervisor
from autoannotator.tools.annotate import AnnotateOptions, run_annotate
from autoannotator.tools.audit import audit_files, audit_topics, format_report
from autoannotator.tools.configcheck import config_warnings
from autoannotator.tools.producer import produce_file
from autoannotator.wire import TOPICS, decode, to_json

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the operator tools: ``broker``, ``produce``, ``tail``, ``check-config``, ``audit``, ``up``, ``annotate``."""
    p = subparsers.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) on loopback")
    p.add_argument("--config", type=Path, help="announce the broker in this config's data_dir")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--storage", default="memory://tansu/", help="memory://tansu/ (default) or s3://bucket/")
    p.set_defaults(func=cmd_broker)

    p = subparsers.add_parser("produce", help="send a CSV or JSONL file of texts to the texts topic")
    p.add_argument("file", type=Path)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--id-column", default="id", help="column/field holding the record id (generated if absent)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--limit", type=int, default=None, help="send at most this many records")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_produce)

    p = subparsers.add_parser("tail", help="print a topic's messages as JSON lines")
    p.add_argument("topic", choices=sorted(TOPICS))
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--follow", action="store_true", help="keep waiting for new messages")
    p.add_argument("--max", type=int, default=None, help="stop after this many messages")
    p.set_defaults(func=cmd_tail)

    p = subparsers.add_parser("check-config", help="validate a pipeline config and print it with defaults")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_check_config)

    p = subparsers.add_parser("audit", help="no-loss accounting: input ids vs labels ∪ rejected")
    p.add_argument("--config", type=Path, help="audit a run on Kafka (with --input-topic)")
    p.add_argument("--input-topic", default="texts")
    p.add_argument("--input", type=Path, help="audit a batch job: its CSV/JSONL input file ...")
    p.add_argument("--output", type=Path, nargs="*", default=[], help="... against its output JSONL file(s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_audit)

    p = subparsers.add_parser("up", help="start every configured service (and the embedded broker if needed)")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--no-trainer", action="store_true")
    p.add_argument("--no-reviewer", action="store_true")
    p.add_argument("--metrics-base-port", type=int, default=9400, help="services get consecutive metrics ports")
    p.set_defaults(func=cmd_up)

    p = subparsers.add_parser(
        "annotate",
        help="label a CSV or JSONL file on the streaming pipeline (JSONL out)",
        description="Without --config: the embedded broker and the demo's tweet-sentiment specialists. With a "
        "config naming a Kafka cluster: sends the file to the running pipeline and collects its outcomes. "
        "Exit code 0: all labelled; 1: some rejected (see <out>.rejected.jsonl); 3: some still need review.",
    )
    p.add_argument("input", type=Path, help="CSV or JSONL with a text column (and optionally an id column)")
    p.add_argument("--out", type=Path, required=True, help="output JSONL")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.add_argument("--review", choices=["auto", "llm", "none"], default="auto",
                   help="none: leave hard records for review (written to <out>.needs-review.jsonl)")
    p.add_argument("--mock-llm-gold", type=Path, default=None,
                   help="review with a SIMULATED LLM answering from this gold file (tests, dry runs)")
    p.add_argument("--mock-llm-accuracy", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--data-dir", type=Path, default=AnnotateOptions.data_dir,
                   help="cache of the embedded mode's models and runs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_annotate)


def cmd_annotate(args: argparse.Namespace) -> int:
    """Run the batch job; the exit code says whether everything was labelled."""
    result = run_annotate(AnnotateOptions(
        input=args.input, out=args.out, config=args.config, id_column=args.id_column, text_column=args.text_column,
        review=args.review, mock_llm_gold=args.mock_llm_gold, mock_llm_accuracy=args.mock_llm_accuracy,
        timeout_s=args.timeout, data_dir=args.data_dir, progress=not args.no_progress,
    ))
    return result.exit_code


def cmd_broker(args: argparse.Namespace) -> int:
    """Run the embedded broker in the foreground until interrupted."""
    broker = EmbeddedBroker(args.port, storage=args.storage).start()
    announced = None
    if args.config:
        config = load_config(args.config)
        announced = broker_file(config)
        announced.parent.mkdir(parents=True, exist_ok=True)
        announced.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": broker.pid}))
        ensure_topics(config.kafka, broker.bootstrap)
    print(f"broker ready: {broker.bootstrap}", flush=True)

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)  # so the finally below stops the child broker
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()
        if announced is not None:
            announced.unlink(missing_ok=True)


def cmd_produce(args: argparse.Namespace) -> int:
    """Send a file's records to ``texts``."""
    config = load_config(args.config)
    bootstrap = bootstrap_for(config, start_embedded=False)
    ensure_topics(config.kafka, bootstrap)
    sent = produce_file(
        config,
        bootstrap,
        args.file,
        id_column=args.id_column,
        text_column=args.text_column,
        limit=args.limit,
        progress=not args.no_progress,
    )
    print(f"produced {sent.count} records to {config.kafka.topic('texts')} ({sent.generated_ids} ids generated)")
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    """Print decoded messages of one topic as JSON lines."""
    config = load_config(args.config)
    bootstrap = bootstrap_for(config, start_embedded=False)
    printed = 0
    with TopicReader(config.kafka, bootstrap, args.topic) as reader:
        while args.max is None or printed < args.max:
            batch = reader.poll(0.5)
            for msg in batch:
                doc = {"key": msg.record_id, "partition": msg.partition, "offset": msg.offset}
                try:
                    record, _ = decode(args.topic, msg, input_format="protobuf", max_text_bytes=1 << 30)
                    doc["value"] = to_json(record)
                except Exception as exc:  # a tail shows any value, never dies on one
                    doc["error"] = f"undecodable value: {exc}"
                    doc["raw"] = (msg.value or b"")[:200].decode("utf-8", "replace")
                sys.stdout.write(json.dumps(doc, ensure_ascii=False) + "\n")
                printed += 1
                if args.max is not None and printed >= args.max:
                    break
            sys.stdout.flush()
            if not batch and reader.at_end and not args.follow:
                break
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config; errors name the field (exit 2), success prints the full document and any warnings.

    Warnings (routing that can never, or always, send a record to review; an LLM without a price)
    leave the exit status 0: the config is valid, only likely not what was meant.
    """
    config = load_config(args.config)
    if not args.quiet:
        sys.stdout.write(dump_config(config))
    print(f"{args.config}: valid ({len(config.specialists)} specialists, labels {config.task.labels})", file=sys.stderr)
    for warning in config_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Report lost, duplicated and rejected ids; exit 1 when something was lost or conflicts."""
    if args.input is not None:
        report = audit_files(args.input, args.output)
    elif args.config is not None:
        config = load_config(args.config)
        report = audit_topics(config, bootstrap_for(config, start_embedded=False), args.input_topic)
    else:
        raise ConfigError("audit needs --config (a run on Kafka) or --input with --output (a batch job)")
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_up(args: argparse.Namespace) -> int:
    """Start the broker (if none is configured) and every service as child processes."""
    config = load_config(args.config)
    supervisor = Supervisor(config, args.config, metrics_base_port=args.metrics_base_port, env=dict(os.environ))
    supervisor.start(trainer=not args.no_trainer, reviewer=not args.no_reviewer)
    print("services up: " + ", ".join(f"{c.name} (metrics :{c.metrics_port})" for c in supervisor.children), flush=True)
    print("Ctrl-C stops everything.", flush=True)
    return supervisor.wait()
