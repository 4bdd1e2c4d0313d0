"""Named errors of the ONNX exporter."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class ExportError(AutoAnnotatorError):
    """A Hugging Face model folder could not be turned into an artifact."""


class ParityError(ExportError):
    """ONNX Runtime's logits differ from torch's by more than the tolerance for the precision."""

    def __init__(self, message: str, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance
