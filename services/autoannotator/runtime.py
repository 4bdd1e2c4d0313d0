"""What every service command does at start-up: logging, config, broker, loop.

``bootstrap_for`` finds the Kafka cluster: ``$AUTOANNOTATOR_KAFKA_BOOTSTRAP`` or the config's
``kafka.bootstrap_servers``; otherwise the embedded broker that ``autoannotator broker`` / ``up``
announced in ``<data_dir>/broker.json``; otherwise a new embedded broker owned by this process.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
from pathlib import Path

from autoannotator.config import PipelineConfig, load_config
from autoannotator.exceptions import BrokerError
from autoannotator.metrics import MetricsServer
from autoannotator.stream.broker import EmbeddedBroker, wait_for_broker
from autoannotator.stream.loop import Processor, ServiceLoop, run_service

log = logging.getLogger(__name__)

_owned_brokers: list[EmbeddedBroker] = []


def setup_logging(level: str | None = None) -> None:
    """One log format for every service: time, level, logger, message (to stderr).

    ``level`` (or ``$AUTOANNOTATOR_LOG``) applies to this package; libraries log warnings and
    errors only (ONNX Runtime's quantiser, for one, logs every tensor at INFO on the root logger).
    """
    chosen = (level or os.environ.get("AUTOANNOTATOR_LOG", "INFO")).upper()
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("autoannotator").setLevel(chosen)


def add_service_args(parser: argparse.ArgumentParser) -> None:
    """Arguments every long-running service takes."""
    parser.add_argument("--config", required=True, type=Path, help="pipeline config (YAML)")
    parser.add_argument("--metrics-port", type=int, default=None, help="port of /metrics, /healthz, /readyz")
    parser.add_argument("--instance", default=os.environ.get("HOSTNAME", "0"), help="instance id (replicas)")


def broker_file(config: PipelineConfig) -> Path:
    """Where a running embedded broker announces its address."""
    return Path(config.data_dir) / "broker.json"


def bootstrap_for(config: PipelineConfig, *, start_embedded: bool = True) -> str:
    """Bootstrap servers for this config, starting an embedded broker only as a last resort."""
    configured = config.bootstrap_servers()
    if configured:
        return configured
    announced = broker_file(config)
    if announced.is_file():
        try:
            bootstrap = json.loads(announced.read_text())["bootstrap"]
            wait_for_broker(bootstrap, timeout_s=3)
            return bootstrap
        except (BrokerError, KeyError, ValueError):
            log.warning("stale %s; ignoring it", announced)
    if not start_embedded:
        raise BrokerError("no Kafka configured (kafka.bootstrap_servers / $AUTOANNOTATOR_KAFKA_BOOTSTRAP)")
    broker = EmbeddedBroker().start()
    _owned_brokers.append(broker)
    atexit.register(broker.stop)
    log.warning("no Kafka configured: started an embedded broker on %s for this process only", broker.bootstrap)
    return broker.bootstrap


def start_probes(config: PipelineConfig, args: argparse.Namespace) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` now, before a slow start-up (model fetch and load).

    Until :func:`serve` hands the server to the service loop, ``/healthz`` answers ok and ``/readyz``
    answers 503: a Kubernetes startupProbe waits for the load instead of killing the pod.
    """
    port = config.metrics.port if args.metrics_port is None else args.metrics_port
    server = MetricsServer(config.metrics.host, port, health=lambda: True, ready=lambda: False)
    server.start()
    log.info("probes and metrics on %s (not ready until the service has started)", server.url)
    return server


def serve(config: PipelineConfig, service: str, processor: Processor, args: argparse.Namespace,
          group_id: str | None = None, bootstrap: str | None = None,
          metrics: MetricsServer | None = None) -> ServiceLoop:
    """Build the service loop for ``processor`` and run it in the foreground until stopped.

    ``bootstrap``: brokers other than the configured ones (a service writing to a second cluster);
    ``metrics``: the server :func:`start_probes` started early, taken over by the loop.
    """
    loop = ServiceLoop(
        config,
        service,
        processor,
        bootstrap=bootstrap or bootstrap_for(config),
        group_id=group_id,
        instance_id=str(args.instance),
        metrics_port=args.metrics_port,
        metrics=metrics,
    )
    run_service(loop)
    return loop


def load(args: argparse.Namespace) -> PipelineConfig:
    """Load the ``--config`` of a command (errors name the field)."""
    return load_config(args.config)
