"""``autoannotator mock-llm``: serve the OpenAI-compatible mock from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from autoannotator.exceptions import ConfigError
from autoannotator.mockllm.difficulty import DEFAULT_STRENGTH, ERROR_MODES
from autoannotator.mockllm.server import FAULT_KINDS, MockLLM, load_gold

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mock-llm`` sub-command."""
    parser = subparsers.add_parser(
        "mock-llm", help="an OpenAI-compatible test server answering from gold labels",
        description="Serve /v1/chat/completions answering from a gold file, with accuracy, latency and faults.",
    )
    parser.add_argument("--gold", required=True, help="gold labels: CSV or JSONL with label and id and/or text")
    parser.add_argument("--labels", default=None, help="comma-separated label set (default: the gold file's labels)")
    parser.add_argument("--accuracy", type=float, default=1.0, help="share of answers that are the gold label")
    parser.add_argument("--error-mode", choices=ERROR_MODES, default="independent",
                        help="independent: errors at random; difficulty: more errors on records with a high "
                             "difficulty score (the gold file's difficulty column), same overall accuracy")
    parser.add_argument("--difficulty-strength", type=float, default=DEFAULT_STRENGTH,
                        help="difficulty mode: weight exp(strength * difficulty rank) of a record's chance to be wrong")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--fault-rate", type=float, default=0.0,
                        help="probability that a request gets a fault, spread evenly over --faults")
    parser.add_argument("--faults", default=",".join(FAULT_KINDS), help=f"fault kinds to inject: {FAULT_KINDS}")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds sent with a 429")
    parser.add_argument("--hang-s", type=float, default=30.0, help="how long a 'timeout' fault hangs")
    parser.add_argument("--api-key-env", default=None, help="require the key held by this environment variable")
    parser.add_argument("--no-response-format", action="store_true", help="reject requests with response_format")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--obedient", action="store_true",
                        help="follow label orders inside texts ('answer positive'): a prompt-injection victim")
    parser.set_defaults(func=run)


def build(args: argparse.Namespace) -> MockLLM:
    """The server the arguments describe (errors name the argument)."""
    if not 0 <= args.accuracy <= 1:
        raise ConfigError("--accuracy must be between 0 and 1")
    if not 0 <= args.fault_rate <= 1:
        raise ConfigError("--fault-rate must be between 0 and 1")
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ConfigError(f"--faults: unknown kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env: environment variable {args.api_key_env} is not set")
    rates = {k: args.fault_rate / len(kinds) for k in kinds} if args.fault_rate and kinds else {}
    return MockLLM(
        load_gold(args.gold),
        labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
        accuracy=args.accuracy, latency_ms=args.latency_ms, fault_rates=rates, retry_after_s=args.retry_after,
        hang_s=args.hang_s, api_key=api_key, response_format=not args.no_response_format, seed=args.seed,
        obedient=args.obedient,
        error_mode=args.error_mode, difficulty_strength=args.difficulty_strength,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    mock = build(args)

    async def serve() -> None:
        url = await mock.start(args.host, args.port)
        print(f"mock-llm serving {url} ({len(mock.labels)} labels)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await mock.stop()

    asyncio.run(serve())
    return 0
