"""Shared fixtures: a real Kafka-protocol broker and per-test pipeline configs.

Broker order (ENVIRONMENT.md): ``$KAFKA_BOOTSTRAP`` if set → testcontainers' Kafka when a
Docker engine answers → the embedded Tansu broker on a free loopback port. Every test gets its
own topic prefix, so tests never see each other's records.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.stream.broker import EmbeddedBroker
from autoannotator.stream.kafka import delete_topics, ensure_topics

LABELS = ["negative", "neutral", "positive"]


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real Kafka-protocol broker for the whole test session."""
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap


@pytest.fixture
def make_config(kafka_bootstrap: str) -> Iterator[Callable[..., PipelineConfig]]:
    """Factory of valid pipeline configs bound to the test broker, each with fresh topics.

    Keyword arguments are merged (one level deep) into a minimal config document, e.g.
    ``make_config(voter={"policy": "soft"}, specialists=[{"name": "s1"}])``.
    """
    made: list[PipelineConfig] = []

    def factory(create: bool = True, **sections: Any) -> PipelineConfig:
        doc: dict[str, Any] = {
            "task": {"name": "test", "description": "test task", "labels": list(LABELS)},
            "kafka": {
                "bootstrap_servers": kafka_bootstrap,
                "topic_prefix": f"t{uuid.uuid4().hex[:10]}.",
                "partitions": 3,
                "session_timeout_ms": 3000,
            },
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        config = parse_config(doc)
        if create:
            ensure_topics(config.kafka, kafka_bootstrap)
        made.append(config)
        return config

    yield factory
    for config in made:
        with contextlib.suppress(Exception):
            delete_topics(config.kafka, kafka_bootstrap)


# --- Tiny models (model store / exporter): built once per session, offline, in a few seconds. ---


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Hugging Face BERT classifier folder (labels negative, neutral, positive) with a fast tokenizer.

    Session-scoped and shared: copy it before changing it.
    """
    from tests.helpers.tiny_model import build_tiny_hf_model

    return build_tiny_hf_model(tmp_path_factory.mktemp("tiny-hf") / "model")


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_hf_model: Path) -> Path:
    """The exported fp32 artifact of ``tiny_hf_model`` (model.onnx, tokenizer/, weights/, manifest.json).

    Session-scoped and shared: publish it to a store or copy it before changing it.
    """
    from tests.helpers.tiny_model import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny-artifact") / "artifact", model_dir=tiny_hf_model)


@pytest.fixture(scope="session")
def second_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained with another seed, so specialists sometimes disagree (and the LLM is asked)."""
    from tests.helpers.tiny_model import build_tiny_artifact, build_tiny_hf_model

    root = tmp_path_factory.mktemp("second")
    model = build_tiny_hf_model(root / "model", seed=7, train_steps=5)
    return build_tiny_artifact(root / "artifact", model_dir=model)
