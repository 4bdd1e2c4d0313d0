"""Sub-commands: ``demo`` (the main job on the embedded defaults)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from autoannotator.demo.annotate import AnnotateOptions, run_annotate
from autoannotator.demo.run import DemoOptions, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo``."""
    defaults = DemoOptions()
    p = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on real tweets (builds three specialists on first use)",
        description="Builds (once) three tweet-sentiment specialists, starts the embedded broker and every "
        "service, streams held-out tweets, reviews hard records with a simulated LLM (or the endpoint in "
        "$AUTOANNOTATOR_LLM_URL), and prints a summary against gold labels with a PNG chart.",
    )
    p.add_argument("--data-dir", type=Path, default=defaults.data_dir, help="cache of models, runs and results")
    p.add_argument("--records", type=int, default=defaults.records, help="tweets to stream")
    p.add_argument("--chunk", type=int, default=defaults.chunk, help="records per chart window")
    p.add_argument("--rate", type=float, default=defaults.rate,
                   help="records produced per second, steadily (the stream never waits for training)")
    p.add_argument("--llm-accuracy", type=float, default=defaults.llm_accuracy,
                   help="accuracy of the simulated reviewer (mock-llm)")
    p.add_argument("--llm-latency-ms", type=float, default=defaults.llm_latency_ms)
    p.add_argument("--llm-model", default=defaults.llm_model, help="model name sent to the endpoint and priced")
    p.add_argument("--policy", choices=["vote", "soft", "error-bounded"], default=None,
                   help="routing (default: error-bounded where the voter has it, else soft)")
    p.add_argument("--tau", type=float, default=None,
                   help="soft routing threshold (default: solved on a calibration split for --target-call-rate)")
    p.add_argument("--target-call-rate", type=float, default=defaults.target_call_rate,
                   help="share of records soft routing should send to the LLM before any training")
    p.add_argument("--beta", type=int, default=defaults.beta, help="reviewed samples per training round")
    p.add_argument("--train-steps", type=int, default=defaults.train_steps, help="optimiser steps per round")
    p.add_argument("--no-training", action="store_true", help="run without the trainer")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--timeout", type=float, default=defaults.timeout_s)
    p.set_defaults(func=cmd_demo)

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
    p.add_argument("--data-dir", type=Path, default=defaults.data_dir)
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every record was decided."""
    if args.log_level is None:
        # The demo prints its own progress; service logs go to the run's log folder.
        logging.getLogger("autoannotator").setLevel(logging.WARNING)
    summary = run_demo(DemoOptions(
        data_dir=args.data_dir, records=args.records, chunk=args.chunk, rate=args.rate, llm_accuracy=args.llm_accuracy,
        llm_latency_ms=args.llm_latency_ms, llm_model=args.llm_model, policy=args.policy or "", tau=args.tau,
        target_call_rate=args.target_call_rate,
        beta=args.beta, train_steps=args.train_steps, training=not args.no_training, seed=args.seed,
        timeout_s=args.timeout,
    ))
    return 0 if summary.decided == summary.records else 1
