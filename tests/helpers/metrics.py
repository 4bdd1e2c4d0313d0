"""The one way tests read a Prometheus metric: the registry's public API, never private attributes."""

from __future__ import annotations

from prometheus_client import REGISTRY


def counter(name: str, **labels: str) -> float:
    """The current value of one sample (a counter or gauge child) in this process; 0 when never set."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
