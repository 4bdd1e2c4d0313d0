"""Thin wrapper over confluent-kafka: client settings from the config, topic creation.

This is the only module that builds librdkafka property dictionaries.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from autoannotator.config import KafkaConfig
from autoannotator.exceptions import BrokerError, ConfigError, DeliveryError
from autoannotator.wire import SPEND_TOPIC, TOPICS

log = logging.getLogger(__name__)


def client_settings(kafka: KafkaConfig, bootstrap: str) -> dict[str, object]:
    """librdkafka properties shared by every client: bootstrap, security, user extras."""
    settings: dict[str, object] = {"bootstrap.servers": bootstrap, "client.id": "autoannotator"}
    sec = kafka.security
    settings["security.protocol"] = sec.protocol
    if sec.sasl_mechanism:
        settings["sasl.mechanism"] = sec.sasl_mechanism
    if sec.sasl_username:
        settings["sasl.username"] = sec.sasl_username
    if sec.sasl_password_env:
        password = os.environ.get(sec.sasl_password_env)
        if password is None:
            raise ConfigError(
                f"kafka.security.sasl_password_env: environment variable {sec.sasl_password_env} is not set"
            )
        settings["sasl.password"] = password
    for field, prop in (
        ("ssl_ca_location", "ssl.ca.location"),
        ("ssl_certificate_location", "ssl.certificate.location"),
        ("ssl_key_location", "ssl.key.location"),
    ):
        value = getattr(sec, field)
        if value:
            settings[prop] = value
    settings.update(kafka.extra)
    return settings


def make_consumer(kafka: KafkaConfig, bootstrap: str, group_id: str, **overrides: object) -> Consumer:
    """A consumer that never commits by itself: the checkpoint commits after outputs are acked."""
    settings = client_settings(kafka, bootstrap)
    settings.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": max(300, kafka.session_timeout_ms // 3),
            "max.poll.interval.ms": kafka.max_poll_interval_ms,
            "partition.assignment.strategy": kafka.assignment_strategy,
            "isolation.level": "read_committed" if kafka.exactly_once else "read_uncommitted",
        }
    )
    settings.update(overrides)
    return Consumer(settings)


def producer_settings(kafka: KafkaConfig, bootstrap: str, transactional_id: str | None = None) -> dict[str, object]:
    """The librdkafka properties of every producer: idempotent, acks=all, ``kafka.compression``."""
    settings = client_settings(kafka, bootstrap)
    settings.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # kafka.compression; a compression.type in kafka.extra (the older way to set it) still wins.
            "compression.type": kafka.extra.get("compression.type", kafka.compression),
        }
    )
    if transactional_id:
        settings["transactional.id"] = transactional_id
    settings.update({k: v for k, v in kafka.extra.items() if k not in settings})
    return settings


def make_producer(kafka: KafkaConfig, bootstrap: str, transactional_id: str | None = None) -> Producer:
    """An idempotent producer (acks=all); transactional when a transactional id is given."""
    return Producer(producer_settings(kafka, bootstrap, transactional_id))


def produce_acknowledged(kafka: KafkaConfig, bootstrap: str, logical_topic: str, key: bytes, value: bytes,
                         timeout_s: float = 30.0) -> str:
    """Produce one message outside any service loop and return once the broker has acknowledged it.

    For one-off announcements (a model release). Returns the full topic name; raises
    :class:`DeliveryError` when the message is not acknowledged within ``timeout_s`` or fails.
    """
    producer = make_producer(kafka, bootstrap)
    topic = kafka.topic(logical_topic)
    outcome: list[KafkaError | None] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        outcome.append(err)

    producer.produce(topic, key=key, value=value, on_delivery=delivered)
    remaining = producer.flush(timeout_s)
    if remaining or not outcome:
        raise DeliveryError(f"not acknowledged by {bootstrap} within {timeout_s:g}s")
    if outcome[0] is not None:
        raise DeliveryError(f"produce to {topic} failed: {outcome[0].str()}")
    return topic


# Topic-level configs by logical topic: the spend ledger keeps only the latest value of each key.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {SPEND_TOPIC: {"cleanup.policy": "compact"}}


def topic_names(kafka: KafkaConfig, logical: Iterable[str] = TOPICS) -> list[str]:
    """Full names of the given logical topics (all of the pipeline's topics by default)."""
    return [kafka.topic(name) for name in logical]


def ensure_topics(
    kafka: KafkaConfig, bootstrap: str, logical: Iterable[str] = TOPICS, timeout_s: float = 30.0
) -> list[str]:
    """Create the pipeline's topics with the configured partitions; existing ones are kept."""
    admin = AdminClient(client_settings(kafka, bootstrap))
    names = topic_names(kafka, logical)
    configs = {kafka.topic(name): conf for name, conf in TOPIC_CONFIGS.items()}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = set(admin.list_topics(timeout=5).topics)
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            time.sleep(0.5)
    missing = [name for name in names if name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=kafka.partitions, replication_factor=kafka.replication_factor,
                      config=configs.get(name, {}))
             for name in missing],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
                log.info("created topic %s (%d partitions)", name, kafka.partitions)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {name}: {exc}") from exc
    _wait_for_leaders(admin, names, deadline)
    return names


def _wait_for_leaders(admin: AdminClient, names: list[str], deadline: float) -> None:
    while True:
        meta = admin.list_topics(timeout=5)
        ready = all(
            name in meta.topics
            and meta.topics[name].error is None
            and meta.topics[name].partitions
            and all(p.leader >= 0 for p in meta.topics[name].partitions.values())
            for name in names
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics not ready in time: {names}")
        time.sleep(0.2)


def delete_topics(kafka: KafkaConfig, bootstrap: str, logical: Iterable[str] = TOPICS) -> None:
    """Delete the pipeline's topics (tests; the embedded broker only frees memory this way)."""
    admin = AdminClient(client_settings(kafka, bootstrap))
    futures = admin.delete_topics(topic_names(kafka, logical), operation_timeout=30)
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise
