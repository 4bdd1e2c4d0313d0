"""Prometheus metrics of the specialist, labelled by specialist name."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS = Counter(
    "autoannotator_specialist_predictions_total",
    "Predictions emitted (rate() gives records/s), by status: ok, bad_input, error, no_model (cold start)",
    ["specialist", "status"],
)
BATCH_SIZE = Histogram(
    "autoannotator_specialist_batch_size",
    "Records per inference batch",
    ["specialist"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_TOKENS = Histogram(
    "autoannotator_specialist_batch_tokens",
    "Padded tokens per inference batch (longest record x records)",
    ["specialist"],
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
INFERENCE_SECONDS = Histogram(
    "autoannotator_specialist_inference_seconds",
    "ONNX Runtime time per batch (feeds built, session run, softmax)",
    ["specialist"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
QUEUE_WAIT = Histogram(
    "autoannotator_specialist_queue_wait_seconds",
    "Time a record waited in the batch queue",
    ["specialist"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
QUEUE_SIZE = Gauge("autoannotator_specialist_queue_size", "Records waiting for a batch", ["specialist"])
MODEL_VERSION = Gauge(
    "autoannotator_specialist_model_info",
    "1 for the model version and execution provider now serving",
    ["specialist", "version", "provider"],
)
RELOADS = Counter(
    "autoannotator_specialist_reloads_total",
    "Model releases handled, by result: ok, fetch_error, integrity_error, load_error, skipped",
    ["specialist", "result"],
)
ERRORS = Counter(
    "autoannotator_specialist_errors_total",
    "Failures, by kind: inference, tokenize, bad_input",
    ["specialist", "kind"],
)
