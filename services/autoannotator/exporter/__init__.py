"""The ONNX exporter: a Hugging Face classifier folder -> the artifact a specialist serves.

See :func:`export_model`; ``autoannotator export`` is its command line.
"""

from autoannotator.exporter.exceptions import ExportError, ParityError
from autoannotator.exporter.export import ExportReport, export_model

__all__ = ["ExportError", "ExportReport", "ParityError", "export_model"]
