"""Feeds the voter's :class:`~autoannotator.voter.audit.AuditWindow` from the broker, outside the loop.

:class:`AuditFollower` reads ``model-releases`` (temperatures and held-out predictions of each
version) and ``reviewed`` (the reviewer's labels of audit samples) from the beginning, without a
consumer group, so every voter replica sees every outcome and a restarted voter rebuilds exactly the
windows it had. :meth:`AuditFollower.start` reads both to their end before the voter decides
anything — a restarted voter resumes with the threshold it had, not the conservative default — and
then follows them in a daemon thread.
"""

from __future__ import annotations

import logging
import threading

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.stream.reader import TopicReader
from autoannotator.voter import metrics
from autoannotator.voter.audit import AuditWindow
from autoannotator.wire import RELEASES_TOPIC, ModelRelease, RawMessage, ReviewedSample, decode

log = logging.getLogger(__name__)


class AuditFollower:
    """Reads releases and reviewed samples into an audit window; a context manager."""

    def __init__(self, config: PipelineConfig, window: AuditWindow, *, bootstrap: str, poll_s: float = 0.5) -> None:
        self.window = window
        self._releases = TopicReader(config.kafka, bootstrap, RELEASES_TOPIC, from_beginning=True)
        self._reviewed = TopicReader(config.kafka, bootstrap, "reviewed", from_beginning=True)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, catch_up_s: float = 60.0) -> AuditFollower:
        """Read both topics to their end (the state before this process), then follow them."""
        releases = self._feed_releases(self._releases.drain(catch_up_s))
        reviewed = self._feed_reviewed(self._reviewed.drain(catch_up_s))
        rebuilt = self.window.refresh()
        log.info("audit state rebuilt from %d releases and %d audit outcomes (%d version sets)", releases, reviewed,
                 len(rebuilt))
        self._thread = threading.Thread(target=self._follow, name="audit-follower", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                changed = self._feed_releases(self._releases.poll(self._poll_s / 2))
                changed += self._feed_reviewed(self._reviewed.poll(self._poll_s / 2))
                if changed:
                    self.window.refresh()
            except Exception:  # the follower must outlive a bad poll; the loop keeps deciding meanwhile
                log.exception("audit follower: reading releases or reviewed samples failed; retrying")
                self._stop.wait(1.0)

    def _feed_releases(self, messages: list[RawMessage]) -> int:
        for msg in messages:
            try:
                release, _ = decode(RELEASES_TOPIC, msg)
            except BadInput as exc:
                log.warning("undecodable release at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc)
                continue
            assert isinstance(release, ModelRelease)
            self.window.add_release(release)
        return len(messages)

    def _feed_reviewed(self, messages: list[RawMessage]) -> int:
        added = 0
        for msg in messages:
            try:
                sample, _ = decode("reviewed", msg)
            except BadInput as exc:
                log.warning("undecodable reviewed sample at %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset,
                            exc)
                continue
            assert isinstance(sample, ReviewedSample)
            key = self.window.add_reviewed(sample)
            if key is not None:
                added += 1
                agreed = sample.consensus_label == sample.label if sample.consensus_label else None
                metrics.AUDIT_OUTCOMES.labels("unknown" if agreed is None else str(agreed).lower()).inc()
        return added

    def close(self) -> None:
        """Stop following and close both readers."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._releases.close()
        self._reviewed.close()

    def __enter__(self) -> AuditFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
