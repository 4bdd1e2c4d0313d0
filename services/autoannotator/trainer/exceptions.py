"""Named errors of the trainer; every failed round records one of these as its error."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class TrainerError(AutoAnnotatorError):
    """Base of the trainer's errors."""


class PoolError(TrainerError):
    """The sample pool cannot be opened, read or written."""


class LabelMappingError(TrainerError):
    """A reviewed (task) label has no single model label to train towards."""


class FineTuneError(TrainerError):
    """Fine-tuning failed (weights missing, bad data, non-finite loss, torch error)."""


class GateError(TrainerError):
    """The promotion gate could not evaluate (no held-out samples, model failed to load)."""


class PromotionError(TrainerError):
    """Exporting, publishing or announcing a promoted candidate failed."""


class RoundCancelled(TrainerError):
    """The round was stopped (service shutdown); it is owed again at the next start."""
