"""The trainer's Prometheus metrics (DESIGN.md, "Metrics")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

POOL_SIZE = Gauge("autoannotator_trainer_pool_size", "Reviewed samples in the pool", ["split"])
SAMPLES_IN = Counter(
    "autoannotator_trainer_samples_total", "Reviewed samples consumed, by outcome", ["outcome"]
)
ROUNDS = Counter("autoannotator_trainer_rounds_total", "Training rounds by result", ["specialist", "result"])
ROUND_SECONDS = Histogram(
    "autoannotator_trainer_round_seconds",
    "Duration of one training round (fine-tune, gate, export, publish)",
    ["specialist"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600),
)
HELDOUT_ACCURACY = Gauge(
    "autoannotator_trainer_heldout_accuracy",
    "Held-out accuracy at the last round's gate",
    ["specialist", "model"],  # model: candidate | current
)
HELDOUT_LLM_SHARE = Gauge(
    "autoannotator_trainer_heldout_llm_share",
    "LLM share the configured routing would cause at the last gate: candidate and current on held-out audit "
    "samples, serving on the serving versions' live audit samples",
    ["specialist", "model"],  # model: candidate | current (held-out audit) | serving (the live audit samples)
)
DEVICE = Gauge("autoannotator_trainer_device_info", "1 for the device the last fine-tuning ran on", ["device"])
PROMOTED_VERSION = Gauge(
    "autoannotator_trainer_promoted_version_info",
    "1 for the model version the trainer last promoted per specialist",
    ["specialist", "version"],
)
ROUNDS_OWED = Gauge("autoannotator_trainer_rounds_owed", "Specialists with a training round due", [])
ROUND_RUNNING = Gauge("autoannotator_trainer_round_running", "1 while a training round runs", [])

_promoted: dict[str, str] = {}


def set_promoted(specialist: str, version: str) -> None:
    """Point the promoted-version info metric of one specialist at ``version``."""
    previous = _promoted.get(specialist)
    if previous is not None and previous != version:
        PROMOTED_VERSION.remove(specialist, previous)
    _promoted[specialist] = version
    PROMOTED_VERSION.labels(specialist, version).set(1)


_device: list[str] = []


def set_device(device: str) -> None:
    """Point the device info metric at the device the last fine-tuning used (cpu, cuda)."""
    if _device and _device[0] != device:
        DEVICE.remove(_device[0])
    _device[:] = [device]
    DEVICE.labels(device).set(1)
