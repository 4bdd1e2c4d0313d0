"""Named errors shared by every service. Each service package adds its own beside its code."""

from __future__ import annotations


class AutoAnnotatorError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(AutoAnnotatorError):
    """The pipeline config is unreadable or invalid; the message names the field."""


class BadInput(AutoAnnotatorError):
    """A record cannot be labelled as it is (undecodable, empty, too large, wrong schema).

    ``reason`` is a short machine-readable code that ends up on the ``rejected`` topic;
    ``record_id``, set by :func:`autoannotator.wire.decode`, the id of the record as far as its
    message could be read (the id rule), under which it is rejected; ``text`` is the text when
    one was read (empty, too large), so the message's text hash is the same whether or not it
    could be labelled.
    """

    def __init__(self, reason: str, detail: str = "", record_id: str | None = None, *,
                 text: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.record_id = record_id
        self.text = text


class CalibrationError(AutoAnnotatorError):
    """A calibration set or target cannot be used (bad rows, unknown labels, unreachable target)."""


class BrokerError(AutoAnnotatorError):
    """The Kafka broker cannot be started, reached or used."""


class DeliveryError(BrokerError):
    """The broker did not acknowledge produced messages; offsets are not committed."""


class CheckpointError(BrokerError):
    """Committing consumer offsets (or a transaction) failed; the batch will be re-read."""
