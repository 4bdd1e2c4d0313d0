"""``autoannotator specialist --config pipeline.yaml --name NAME``: serve one specialist."""

from __future__ import annotations

import argparse
import logging

from autoannotator.runtime import add_service_args, bootstrap_for, load, serve, start_probes

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``specialist`` sub-command."""
    parser = subparsers.add_parser(
        "specialist",
        help="serve one specialist: label the texts topic with its current model, follow model releases",
        description="Consume `texts` in the specialist's own consumer group, label each record with the "
        "store's current model version and emit one Prediction per record; new versions announced on "
        "`model-releases` are loaded beside the old one and swapped in between batches.",
    )
    add_service_args(parser)
    parser.add_argument("--name", required=True, help="the specialist's name (one of specialists[].name)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the current model version (none: cold start), start following releases and serve until stopped."""
    # Imported here so that `autoannotator --help` does not load ONNX Runtime.
    from autoannotator.artifacts.store import store_for
    from autoannotator.specialist.reload import ReleaseFollower
    from autoannotator.specialist.service import Specialist, group_id
    from autoannotator.stream.kafka import ensure_topics

    config = load(args)
    config.specialist(args.name)  # fails early, naming the field, for an unknown name
    probes = start_probes(config, args)  # up (not ready) while the model is fetched and loaded
    store = store_for(config)
    bootstrap = bootstrap_for(config)
    # The follower reads model-releases before the service loop would create the topics: a
    # specialist started first (or on a fresh cluster) must not fail for want of the topic.
    ensure_topics(config.kafka, bootstrap)
    follower = ReleaseFollower(config, args.name, store, bootstrap=bootstrap)
    follower.start()
    try:
        engine = follower.load_current_or_none()
        if engine is None:
            log.warning("specialist %s: cold start: the model store %s has no version of it yet; every record "
                        "goes to review until the trainer releases the first one", args.name, store.uri)
        else:
            log.info(
                "specialist %s: serving version %r on %s (asked for %s)",
                args.name, engine.version, engine.providers, config.specialist(args.name).provider,
            )
        processor = Specialist(config, args.name, engine, follower=follower)
        serve(config, f"specialist-{args.name}", processor, args,
              group_id=group_id(args.name, config.kafka), metrics=probes)
    finally:
        follower.stop()
    return 0
