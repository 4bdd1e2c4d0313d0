"""Sub-command ``demo``: the whole pipeline on real tweets, with a summary against gold labels."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

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
                   help="routing (default: the voter config default, error-bounded)")
    p.add_argument("--target-error", type=float, default=defaults.target_error,
                   help="error-bounded routing: stated error of accepted labels, measured against the reviewer "
                   "(keep it above the reviewer's own error, 1 - --llm-accuracy)")
    p.add_argument("--tau", type=float, default=None,
                   help="soft routing threshold (default: solved on a calibration split for --target-call-rate)")
    p.add_argument("--target-call-rate", type=float, default=defaults.target_call_rate,
                   help="share of records soft routing should send to the LLM before any training")
    p.add_argument("--beta", type=int, default=defaults.beta, help="reviewed samples per training round")
    p.add_argument("--train-epochs", type=int, default=defaults.train_epochs,
                   help="passes over each round's new and replay samples")
    p.add_argument("--train-steps", type=int, default=defaults.train_steps,
                   help="at most this many optimiser steps per round and specialist")
    p.add_argument("--no-training", action="store_true", help="run without the trainer")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--timeout", type=float, default=defaults.timeout_s)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when every record was decided."""
    if args.log_level is None:
        # The demo prints its own progress; service logs go to the run's log folder.
        logging.getLogger("autoannotator").setLevel(logging.WARNING)
    summary = run_demo(DemoOptions(
        data_dir=args.data_dir, records=args.records, chunk=args.chunk, rate=args.rate, llm_accuracy=args.llm_accuracy,
        llm_latency_ms=args.llm_latency_ms, llm_model=args.llm_model, policy=args.policy or "", tau=args.tau,
        target_error=args.target_error,
        target_call_rate=args.target_call_rate,
        beta=args.beta, train_steps=args.train_steps, train_epochs=args.train_epochs,
        training=not args.no_training, seed=args.seed,
        timeout_s=args.timeout,
    ))
    return 0 if summary.decided == summary.records else 1
