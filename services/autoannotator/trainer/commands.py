"""``autoannotator trainer``: the trainer service, a one-shot round (``--once``) and the round ledger."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict

from autoannotator.runtime import add_service_args, bootstrap_for, load, serve, start_probes
from autoannotator.trainer.pool import FAILED, INTERRUPTED, SamplePool

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``trainer`` sub-command."""
    parser = subparsers.add_parser(
        "trainer",
        help="consume reviewed samples into the pool and fine-tune the specialists every beta samples",
        description="Consume `reviewed` into a durable pool; every trainer.beta new samples fine-tune each "
        "specialist, gate the candidate on held-out samples (accuracy, and the LLM share it would cause, "
        "estimated on held-out audit samples), and publish and announce it when neither is worse.",
    )
    add_service_args(parser)
    parser.add_argument("--once", action="store_true",
                        help="run one round now over the pool (each specialist with new samples), then exit")
    parser.add_argument("--specialist", action="append", default=None,
                        help="with --once: only this specialist (repeatable)")
    parser.add_argument("--rounds", action="store_true", help="print the round ledger as JSON lines and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the trainer service, one round (``--once``) or print the ledger (``--rounds``)."""
    from autoannotator.trainer.service import SERVICE, build_trainer

    config = load(args)
    if args.rounds:
        pool = SamplePool(config.trainer.pool_path, config.trainer.holdout_fraction,
                                         config.trainer.audit_holdout_fraction)
        for record in pool.rounds():
            print(json.dumps(asdict(record), sort_keys=True))
        return 0
    probes = None if args.once else start_probes(config, args)  # up (not ready) while the trainer starts
    bootstrap = bootstrap_for(config)
    trainer = build_trainer(config, bootstrap)
    if args.once:
        results = trainer.run_once(args.specialist)
        for record in results:
            print(json.dumps(asdict(record), sort_keys=True))
        return 1 if any(r.status in (FAILED, INTERRUPTED) for r in results) else 0
    serve(config, SERVICE, trainer, args, metrics=probes)
    return 0
