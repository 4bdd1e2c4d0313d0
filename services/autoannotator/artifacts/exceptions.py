"""Named errors of the model-artifact layer: store, manifests and label mappings, export, engine, release."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class ModelStoreError(AutoAnnotatorError):
    """The model store cannot be read or written as asked."""


class VersionNotFound(ModelStoreError):
    """The specialist or version does not exist (or is not complete) in the store."""


class IntegrityError(ModelStoreError):
    """A fetched model file does not match the sha256 its manifest records."""


class ManifestError(ModelStoreError):
    """A manifest.json is missing, unreadable or has a field of the wrong type; the message names it."""


class LabelMapError(AutoAnnotatorError):
    """A model's own labels cannot be mapped onto the task labels without guessing.

    ``unmatched_model`` lists model labels that map nowhere, ``unsourced_task`` task labels that
    no model label feeds.
    """

    def __init__(self, message: str, unmatched_model: list[str] | None = None,
                 unsourced_task: list[str] | None = None) -> None:
        super().__init__(message)
        self.unmatched_model = unmatched_model or []
        self.unsourced_task = unsourced_task or []


class ReleaseError(ModelStoreError):
    """A model release could not be announced on ``model-releases`` (not acknowledged by the broker)."""


class ExportError(AutoAnnotatorError):
    """A Hugging Face model folder could not be turned into an artifact."""


class ParityError(ExportError):
    """ONNX Runtime's logits differ from torch's by more than the tolerance for the precision."""

    def __init__(self, message: str, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


class EngineError(AutoAnnotatorError):
    """Base of the inference engine's errors."""


class ArtifactError(EngineError):
    """A model artifact is missing a file, has an unreadable manifest or cannot be loaded by ONNX Runtime."""


class ProviderUnavailable(EngineError):
    """The requested execution provider is not usable here (e.g. CUDA asked, session fell back to CPU)."""


class InferenceError(EngineError):
    """ONNX Runtime failed on a batch of valid inputs; its records get ERROR predictions."""
