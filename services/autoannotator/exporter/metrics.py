"""Prometheus metrics of the exporter (meaningful in long-running users of it, such as the trainer)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EXPORTS = Counter(
    "autoannotator_exports_total",
    "ONNX exports by result (ok, parity_failed, label_map_error, error)",
    ["result"],
)
PARITY_MAX_ABS_DIFF = Gauge(
    "autoannotator_export_parity_max_abs_diff",
    "Largest |ONNX Runtime - torch| logit difference of the last export, by precision",
    ["precision"],
)
