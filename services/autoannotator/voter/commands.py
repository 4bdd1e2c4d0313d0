"""Sub-commands ``voter`` (the service) and ``calibrate`` (temperatures and ``tau`` for soft routing)."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoannotator.runtime import add_service_args, load, serve
from autoannotator.voter.calibrate import calibrate_file, write_calibration
from autoannotator.voter.service import Voter


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``voter`` and ``calibrate``."""
    p = subparsers.add_parser("voter", help="join the specialists' predictions and route each record once")
    add_service_args(p)
    p.set_defaults(func=cmd_voter)

    p = subparsers.add_parser(
        "calibrate", help="fit per-specialist temperatures and solve tau for soft routing on a labelled CSV"
    )
    p.add_argument("--config", required=True, type=Path, help="pipeline config (YAML)")
    p.add_argument("--data", required=True, type=Path, help="CSV with text,label columns")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-call-rate", type=float, help="share of records routed to review (0..1)")
    target.add_argument("--target-error", type=float, help="highest error of accepted labels (0..1)")
    p.add_argument("--artifact", action="append", default=[], metavar="NAME=DIR",
                   help="use this local artifact for a specialist instead of the model store (repeatable)")
    p.add_argument("--write", action="store_true", help="write per-version temperatures and tau into the config")
    p.set_defaults(func=cmd_calibrate)


def cmd_voter(args: argparse.Namespace) -> int:
    """Run the voter service until stopped (after rebuilding its audit state from the broker)."""
    from autoannotator.runtime import bootstrap_for
    from autoannotator.stream.kafka import ensure_topics
    from autoannotator.voter.follower import AuditFollower

    config = load(args)
    bootstrap = bootstrap_for(config)
    ensure_topics(config.kafka, bootstrap)
    from autoannotator.voter.texts import TextFetcher

    texts = TextFetcher(config, bootstrap)
    voter = Voter(config, texts=texts)
    try:
        with AuditFollower(config, voter.window, bootstrap=bootstrap).start():
            serve(config, "voter", voter, args, bootstrap=bootstrap)
    finally:
        texts.close()
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the specialists over a labelled file, fit temperatures, solve tau, print (and write) them."""
    config = load(args)
    result, report = calibrate_file(config, args.data, args.artifact, call_rate=args.target_call_rate,
                                    error=args.target_error)
    print(report)
    if args.write:
        policy = write_calibration(args.config, result)
        print(f"wrote voter.temperatures (per model version) and voter.tau to {args.config}; voter.policy is {policy}")
    return 0
