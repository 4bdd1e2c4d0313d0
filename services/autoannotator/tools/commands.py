"""Sub-commands: broker, produce, tail, up (filled in by the foundation)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands."""
