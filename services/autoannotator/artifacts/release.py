"""Announcing a model version on ``model-releases`` (keyed by specialist name) so running specialists switch.

A release names a version already in the store; the specialist fetches it, verifies the sha256
and swaps. ``kind`` is ``release`` for a new promotion and ``rollback`` for a return to an older
version. :func:`announce` returns only once the broker has acknowledged the message.
"""

from __future__ import annotations

import logging

from autoannotator.artifacts.exceptions import ReleaseError
from autoannotator.artifacts.manifest import Manifest
from autoannotator.artifacts.metrics import RELEASES_ANNOUNCED
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.exceptions import DeliveryError
from autoannotator.stream.kafka import produce_acknowledged
from autoannotator.wire import RELEASES_TOPIC, ModelRelease, encode, now_ms

log = logging.getLogger(__name__)

__all__ = ["KINDS", "RELEASES_TOPIC", "announce", "build_release", "release_for"]
KINDS = ("release", "rollback")


def build_release(manifest: Manifest, artifact_uri: str, kind: str = "release") -> ModelRelease:
    """The ``ModelRelease`` message for a published version's manifest."""
    if kind not in KINDS:
        raise ReleaseError(f"release kind must be one of {KINDS}, got {kind!r}")
    if not manifest.specialist or not manifest.version:
        raise ReleaseError("only a published version (with specialist and version set) can be released")
    return ModelRelease(
        specialist=manifest.specialist,
        version=manifest.version,
        artifact_uri=artifact_uri,
        sha256=manifest.sha256,
        model_labels=list(manifest.model_labels),
        label_map=dict(manifest.label_map),
        metrics={k: float(v) for k, v in manifest.metrics.items()},
        parent_version=manifest.parent_version or "",
        created_ms=now_ms(),
        kind=kind,
        temperature=float(manifest.calibration.get("temperature", 0.0)),
    )


def release_for(store: ModelStore, name: str, version: str, kind: str = "release") -> ModelRelease:
    """The release message for one version in ``store``."""
    return build_release(store.manifest(name, version), store.artifact_uri(name, version), kind)


def announce(config: PipelineConfig, bootstrap: str, release: ModelRelease, timeout_s: float = 30.0) -> None:
    """Produce ``release`` to ``model-releases`` keyed by the specialist and wait for the broker's ack.

    Raises :class:`ReleaseError` when the message is not acknowledged within ``timeout_s``.
    """
    try:
        topic = produce_acknowledged(config.kafka, bootstrap, RELEASES_TOPIC, release.specialist.encode("utf-8"),
                                     encode(release), timeout_s)
    except DeliveryError as exc:
        raise ReleaseError(f"{release.specialist} {release.version}: release on "
                           f"{config.kafka.topic(RELEASES_TOPIC)}: {exc}") from exc
    RELEASES_ANNOUNCED.labels(release.kind).inc()
    log.info("announced %s %s (%s) on %s", release.specialist, release.version, release.kind, topic)
