"""Named errors of the specialist service."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class SpecialistError(AutoAnnotatorError):
    """Base of the specialist's errors."""


class ArtifactError(SpecialistError):
    """A model artifact is missing a file, has an unreadable manifest or cannot be loaded by ONNX Runtime."""


class ProviderUnavailable(SpecialistError):
    """The requested execution provider is not usable here (e.g. CUDA asked, session fell back to CPU)."""


class InferenceError(SpecialistError):
    """ONNX Runtime failed on a batch of valid inputs; its records get ERROR predictions."""


class ReleaseError(SpecialistError):
    """A model release could not be fetched, verified or loaded; the old version keeps serving."""

    def __init__(self, result: str, detail: str) -> None:
        super().__init__(f"{result}: {detail}")
        #: Short machine-readable outcome, the ``result`` label of the reload metric.
        self.result = result
