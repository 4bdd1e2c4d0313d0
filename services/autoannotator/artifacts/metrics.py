"""Prometheus metrics of the model store, release announcements and exports (shared by every process that uses them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STORE_OPERATIONS = Counter(
    "autoannotator_modelstore_operations_total",
    "Model store operations by kind (publish, fetch, set_current, rollback) and result (ok, error)",
    ["op", "result"],
)
INTEGRITY_FAILURES = Counter(
    "autoannotator_modelstore_integrity_failures_total",
    "Files whose sha256 did not match their manifest (at publish or fetch)",
)
FETCH_SECONDS = Histogram(
    "autoannotator_modelstore_fetch_seconds",
    "Time to copy and verify one model version from the store",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
RELEASES_ANNOUNCED = Counter(
    "autoannotator_model_releases_announced_total",
    "Model releases acknowledged by the broker on model-releases, by kind (release, rollback)",
    ["kind"],
)
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
PROVIDER_FALLBACKS = Counter(
    "autoannotator_specialist_provider_fallbacks_total",
    "Execution providers that could not serve a model, by provider and the one used instead",
    ["provider", "fallback"],
)
