"""Named errors shared by every service. Each service package adds its own beside its code."""

from __future__ import annotations


class AutoAnnotatorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AutoAnnotatorError):
    """The pipeline config is unreadable or invalid; the message names the field."""


class BadInput(AutoAnnotatorError):
    """A record cannot be labelled as it is (undecodable, empty, too large, wrong schema).

    ``reason`` is a short machine-readable code that ends up on the ``rejected`` topic; ``text``
    is the text when one was read (empty, too large), so the message's text hash is the same
    whether or not it could be labelled.
    """

    def __init__(self, reason: str, detail: str = "", *, text: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.text = text


class BrokerError(AutoAnnotatorError):
    """The Kafka broker cannot be started, reached or used."""


class DeliveryError(BrokerError):
    """The broker did not acknowledge produced messages; offsets are not committed."""


class CheckpointError(BrokerError):
    """Committing consumer offsets (or a transaction) failed; the batch will be re-read."""
