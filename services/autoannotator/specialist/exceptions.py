"""Named errors of the specialist service."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class SpecialistError(AutoAnnotatorError):
    """Base of the specialist's errors."""


class ReloadError(SpecialistError):
    """A model release could not be fetched, verified or loaded; the old version keeps serving."""

    def __init__(self, result: str, detail: str) -> None:
        super().__init__(f"{result}: {detail}")
        #: Short machine-readable outcome, the ``result`` label of the reload metric.
        self.result = result
