"""``autoannotator reviewer --config pipeline.yaml``: run the reviewer service."""

from __future__ import annotations

import argparse

from autoannotator.runtime import add_service_args, load, serve


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``reviewer`` sub-command."""
    parser = subparsers.add_parser(
        "reviewer", help="review hard records with an LLM and/or a person",
        description="Consume `hard`; emit one label (+ reviewed sample) or one rejection per record.",
    )
    add_service_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the reviewer and serve until stopped."""
    from autoannotator.reviewer.service import SERVICE, Reviewer
    from autoannotator.runtime import bootstrap_for

    config = load(args)
    bootstrap = bootstrap_for(config)
    serve(config, SERVICE, Reviewer(config, bootstrap=bootstrap), args, bootstrap=bootstrap)
    return 0
