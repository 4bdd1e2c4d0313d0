"""The ``autoannotator`` command: one sub-command per service and tool.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``func`` (taking the parsed args, returning an exit code) on each. Modules
are imported when the CLI starts, so a broken module fails loudly rather than hiding a command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from autoannotator import __version__
from autoannotator.exceptions import AutoAnnotatorError
from autoannotator.runtime import setup_logging

# One line per module that contributes sub-commands (keep sorted by service).
COMMAND_MODULES = [
    "autoannotator.artifacts.commands",
    "autoannotator.demo.commands",
    "autoannotator.mockllm.commands",
    "autoannotator.planner.commands",
    "autoannotator.reviewer.commands",
    "autoannotator.specialist.commands",
    "autoannotator.tools.commands",
    "autoannotator.trainer.commands",
    "autoannotator.trainer.train_command",
    "autoannotator.voter.commands",
]

log = logging.getLogger("autoannotator")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="autoannotator",
        description="Streaming annotation: small classifiers vote, an LLM or a person reviews the doubtful "
        "records, and the classifiers learn from the reviews.",
    )
    parser.add_argument("--version", action="version", version=f"autoannotator {__version__}")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    try:
        return int(args.func(args) or 0)
    except AutoAnnotatorError as exc:
        print(f"autoannotator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
