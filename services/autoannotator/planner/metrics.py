"""Prometheus metrics of the planner (scraped when it runs inside a long-lived process, e.g. a notebook or job)."""

from __future__ import annotations

from prometheus_client import Counter

PLANS = Counter("autoannotator_planner_plans_total", "Plans made, by outcome", ["outcome"])
LABEL_MAPPINGS = Counter(
    "autoannotator_planner_label_mappings_total", "Model labels of chosen specialists, by how mapped", ["source"]
)
