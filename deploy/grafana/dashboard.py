"""Builds the AutoAnnotator Grafana dashboard (JSON) from a list of panels.

``python deploy/grafana/dashboard.py`` writes ``deploy/grafana/autoannotator.json`` and the chart's
copy ``helm/autoannotator/files/autoannotator-dashboard.json``; ``--check`` only verifies both are
up to date. Every query uses ``$__rate_interval``; deploy/live_check.py replaces it with a fixed
window and sends every query to a real Prometheus that scraped a pipeline run. Every metric in a query
gets the ``namespace`` and ``job`` variables' selector (:func:`scoped`): two installs never mix.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (ROOT / "deploy/grafana/autoannotator.json", ROOT / "helm/autoannotator/files/autoannotator-dashboard.json")
RATE = "$__rate_interval"
#: What every metric selector gets: the dashboard's namespace and job variables (multi-value, "All").
SCOPE = 'namespace=~"$namespace", job=~"$job"'
_METRIC = re.compile(r"\b(autoannotator_[a-z0-9_]+)(\{([^}]*)\})?")


def scoped(expr: str) -> str:
    """``expr`` with the namespace/job selector added to every autoannotator_* metric."""

    def add(match: re.Match[str]) -> str:
        inner = match.group(3)
        return f"{match.group(1)}{{{SCOPE}{', ' + inner if inner else ''}}}"

    return _METRIC.sub(add, expr)


@dataclass
class Query:
    """One PromQL target of a panel."""

    expr: str
    legend: str = ""


@dataclass
class Panel:
    """A dashboard panel: a title, a visualisation, a unit and its queries."""

    title: str
    queries: list[Query]
    kind: str = "timeseries"
    unit: str = "short"
    description: str = ""
    width: int = 12
    options: dict[str, object] = field(default_factory=dict)


def _quantiles(metric: str, by: str, stage: str) -> list[Query]:
    """p50 and p99 of a histogram, per ``by`` label (or overall when ``by`` is empty)."""
    group = f"le, {by}" if by else "le"
    legend = f" {{{{{by}}}}}" if by else ""
    return [
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))",
            f"{stage} p{int(q * 100)}{legend}",
        )
        for q in (0.5, 0.99)
    ]


def _audit_share(counter: str) -> str:
    """The audit kind's share of a reviewer counter by namespace (0, not no data, before the first audit)."""
    total = f"sum by (namespace) (rate({counter}[{RATE}]))"
    return f"(sum by (namespace) (rate({counter}{{kind=\"audit\"}}[{RATE}])) or {total} * 0) / {total}"


ROWS: list[tuple[str, list[Panel]]] = [
    (
        "Throughput and routing",
        [
            Panel(
                "Records consumed per service",
                [Query(f"sum by (service) (rate(autoannotator_records_in_total[{RATE}]))", "{{service}}")],
                unit="reqps",
                description="Messages each service reads per second (all replicas).",
            ),
            Panel(
                "Records produced per topic",
                [Query(f"sum by (topic) (rate(autoannotator_records_out_total[{RATE}]))", "{{topic}}")],
                unit="reqps",
                description="labels = decided, hard = sent to review, rejected = bad input, with a reason.",
            ),
            Panel(
                "Routing shares (voter)",
                [
                    Query(
                        f"sum by (route) (rate(autoannotator_voter_decisions_total[{RATE}]))"
                        f" / ignoring (route) group_left sum(rate(autoannotator_voter_decisions_total[{RATE}]))",
                        "{{route}}",
                    )
                ],
                unit="percentunit",
                description="label = accepted by the specialists' consensus; "
                "hard = goes to the LLM or a person; rejected = bad input."
                " The hard share is what the LLM costs scale with; it falls as the specialists learn.",
                options={"stack": True},
            ),
            Panel(
                "Uncertainty of decided records (voter)",
                _quantiles("autoannotator_voter_uncertainty", "policy", "uncertainty"),
                unit="percentunit",
            ),
        ],
    ),
    (
        "Label quality (error-bounded routing)",
        [
            Panel(
                "Error of accepted labels vs target (voter)",
                [
                    # -1 means no audit sample is accepted at the current threshold: not an error rate.
                    Query("max by (namespace) (autoannotator_voter_error_estimate) >= 0", "measured {{namespace}}"),
                    Query("max by (namespace) (autoannotator_voter_error_upper_bound)", "upper bound {{namespace}}"),
                    Query("max by (namespace) (autoannotator_voter_target_error)", "target {{namespace}}"),
                ],
                unit="percentunit",
                description="Error of the labels consensus accepts, measured on the audit window at the current "
                "threshold, and its upper confidence bound (voter.bound_confidence); the threshold is chosen so "
                "that the bound stays at or below voter.target_error. The bound is 100% while no threshold is "
                "certified (every record goes to review). Alert: AutoAnnotatorErrorBoundAboveTarget.",
            ),
            Panel(
                "Certified threshold (voter)",
                [Query("max by (namespace) (autoannotator_voter_threshold)", "threshold {{namespace}}")],
                unit="percentunit",
                description="Consensus accepts a record when its calibrated mean probability reaches this. "
                "101% = nothing certified yet (a new version set starts with an empty audit window): "
                "every record goes to review.",
            ),
            Panel(
                "Audit window size (voter)",
                [Query("max by (namespace) (autoannotator_voter_audit_window)", "outcomes {{namespace}}")],
                description="Reviewed audit samples the current version set's threshold is certified on "
                "(at most voter.audit_window; restarts with each new model version unless its release seeds it).",
            ),
            Panel(
                "Audit share of review spend",
                [
                    Query(_audit_share("autoannotator_reviewer_record_cost_usd_total"), "spend {{namespace}}"),
                    Query(_audit_share("autoannotator_reviewer_records_total"), "records {{namespace}}"),
                ],
                unit="percentunit",
                description="Share of the reviewer's LLM spend (and of its labelled records) that goes to audit "
                "samples consensus would have accepted: the price of measuring the error (voter.audit_rate).",
            ),
        ],
    ),
    (
        "LLM review and spend",
        [
            Panel(
                "LLM requests by status",
                [Query(f"sum by (status) (rate(autoannotator_llm_requests_total[{RATE}]))", "{{status}}")],
                unit="reqps",
            ),
            Panel(
                "LLM tokens per second",
                [Query(f"sum by (kind) (rate(autoannotator_llm_tokens_total[{RATE}]))", "{{kind}}")],
                unit="short",
            ),
            Panel(
                "LLM spend, USD per hour",
                [Query(f"sum(rate(autoannotator_llm_cost_usd_total[{RATE}])) * 3600", "USD/h")],
                unit="currencyUSD",
                width=8,
            ),
            Panel(
                "LLM spend, cumulative USD",
                [Query("sum(autoannotator_llm_cost_usd_total)", "USD")],
                kind="stat",
                unit="currencyUSD",
                width=8,
                description="Since the reviewers started (counters reset on restart; "
                "use increase() over a range for a period).",
            ),
            Panel(
                "Budget state",
                [Query("max(autoannotator_llm_budget_state)", "state")],
                kind="stat",
                width=8,
                description="0 = spending allowed, 1 = hourly limit reached (paused), 2 = total budget spent (paused).",
            ),
            Panel(
                "LLM budget remaining, USD",
                [
                    Query("max by (namespace) (autoannotator_llm_budget_limit_usd{window=\"hour\"})"
                          " - on (namespace) max by (namespace) (autoannotator_llm_spend_last_hour_usd)",
                          "this hour {{namespace}}"),
                    Query("max by (namespace) (autoannotator_llm_budget_limit_usd{window=\"total\"})"
                          " - on (namespace) max by (namespace) (autoannotator_llm_spend_total_usd)",
                          "total {{namespace}}"),
                ],
                kind="stat",
                unit="currencyUSD",
                width=8,
                description="Limit minus spend (reviewer.budget): at 0 the reviewer pauses and hard records wait in "
                "Kafka. A limit that is not configured has no series.",
            ),
            Panel(
                "LLM circuit breaker",
                [Query("max by (namespace) (autoannotator_llm_breaker_open)", "open {{namespace}}")],
                kind="stat",
                width=8,
                description="1 while the breaker keeps requests from a failing endpoint (records wait; retried later).",
            ),
            Panel(
                "LLM cache hits",
                [Query(f"sum by (result) (rate(autoannotator_llm_cache_total[{RATE}]))", "{{result}}")],
                unit="reqps",
                width=8,
                description="Repeated texts are answered from the reviewer's cache at no cost.",
            ),
            Panel(
                "Review queue (human)",
                [
                    Query("sum by (status) (autoannotator_review_queue_items)", "{{status}}"),
                    Query("sum(autoannotator_reviewer_pending)", "held by the reviewer"),
                ],
                description="open = waiting for a person on the review page; labelled = inside the undo window; "
                "held = hard records consumed and not yet decided (LLM batch, budget or breaker).",
            ),
            Panel(
                "LLM agreement with people (audited labels)",
                [Query("max(autoannotator_llm_human_agreement)", "agreement"),
                 Query("max(autoannotator_llm_human_kappa)", "Cohen's kappa")],
                description="reviewer.human_audit_rate sends a hash-chosen share of LLM labels to a person as well; "
                "this is how often the person gave the LLM's label (0 until the first audited label is answered).",
            ),
            Panel(
                "Audited LLM labels answered by people",
                [Query("max(autoannotator_llm_human_audited)", "answered")],
                kind="stat",
                description="How many audited LLM labels the agreement is computed on (0: no audit, rate 0).",
            ),
        ],
    ),
    (
        "Latency",
        [
            Panel(
                "End-to-end latency (ingest to decision)",
                [
                    Query(f"histogram_quantile({q}, sum by (le) (rate("
                          f"autoannotator_record_age_seconds_bucket{{outcome!=\"hard\"}}[{RATE}])))",
                          f"p{int(q * 100)}")
                    for q in (0.5, 0.99)
                ],
                unit="s",
                description="Age of a record when its final outcome is written (voter labels and rejections, "
                "reviewer labels and rejections), from TextRecord.created_ms (else the Kafka timestamp).",
            ),
            Panel(
                "Batch time per service (consume to commit)",
                _quantiles("autoannotator_batch_seconds", "service", "batch"),
                unit="s",
            ),
            Panel(
                "Specialist inference time per batch",
                _quantiles("autoannotator_specialist_inference_seconds", "specialist", "inference"),
                unit="s",
            ),
            Panel(
                "Voter join wait (first prediction to decision)",
                _quantiles("autoannotator_voter_join_wait_seconds", "", "join"),
                unit="s",
            ),
            Panel(
                "LLM request latency",
                _quantiles("autoannotator_llm_request_seconds", "", "llm"),
                unit="s",
            ),
        ],
    ),
    (
        "Models and learning",
        [
            Panel(
                "Model version per specialist",
                [Query("max by (specialist, version, provider) (autoannotator_specialist_model_info) == 1",
                       "{{specialist}} {{version}} ({{provider}})")],
                kind="table",
                description="The version each specialist serves now and the execution provider it really runs on.",
                options={"instant": True},
            ),
            Panel(
                "Specialist batch size",
                _quantiles("autoannotator_specialist_batch_size", "specialist", "batch size"),
            ),
            Panel(
                "Reviewed-sample pool",
                [Query("sum by (split) (autoannotator_trainer_pool_size)", "{{split}}")],
                description="Reviewed hard samples the trainer holds; a round starts every beta new samples.",
            ),
            Panel(
                "Held-out accuracy at the last gate",
                [Query("max by (specialist, model) (autoannotator_trainer_heldout_accuracy)",
                       "{{specialist}} {{model}}")],
                unit="percentunit",
                description="Accuracy of the candidate and of the current version on held-out reviewed samples; "
                "the candidate is promoted only when it is not worse.",
            ),
            Panel(
                "Training rounds by result (per hour)",
                [Query("sum by (result) (increase(autoannotator_trainer_rounds_total[1h]))", "{{result}}")],
                kind="barchart",
            ),
        ],
    ),
    (
        "Kafka",
        [
            Panel(
                "Consumer lag per service",
                [Query("sum by (service, topic) (max by (service, topic, partition) (autoannotator_consumer_lag))",
                       "{{service}} / {{topic}}")],
                description="Messages behind the partition end. Growing lag: the service is slower than its input.",
            ),
            Panel(
                "Paused consumers",
                [
                    # A service that never paused has no series yet: show it as 0 rather than leave it out.
                    Query(
                        "max by (service) (autoannotator_consumer_paused)"
                        " or max by (service) (autoannotator_records_in_total) * 0",
                        "{{service}}",
                    )
                ],
                description="1 while a service holds consumption (the reviewer pauses at the budget).",
            ),
        ],
    ),
]


def _variable(name: str, query: str, label: str) -> dict[str, object]:
    """A multi-value query variable with "All" meaning ``.*`` (a series without the label matches too)."""
    return {
        "name": name, "label": label, "type": "query", "query": {"query": query, "refId": name},
        "definition": query, "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "includeAll": True, "allValue": ".*", "multi": True, "refresh": 2, "sort": 1, "hide": 0,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def build() -> dict[str, object]:
    """The dashboard as Grafana's JSON model."""
    panels: list[dict[str, object]] = []
    next_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        x = 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            targets = [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "expr": scoped(q.expr),
                    "legendFormat": q.legend,
                    "instant": bool(panel.options.get("instant")),
                    "range": not panel.options.get("instant"),
                }
                for i, q in enumerate(panel.queries)
            ]
            defaults: dict[str, object] = {"unit": panel.unit}
            if panel.options.get("stack"):
                defaults["custom"] = {"stacking": {"mode": "normal"}}
            panels.append(
                {
                    "id": next_id,
                    "type": panel.kind,
                    "title": panel.title,
                    "description": panel.description,
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
                    "fieldConfig": {"defaults": defaults, "overrides": []},
                    "options": {},
                    "targets": targets,
                }
            )
            next_id += 1
            x += panel.width
        y += 8
    return {
        "uid": "autoannotator",
        "title": "AutoAnnotator",
        "description": "Throughput, routing, LLM spend, latency and learning of the AutoAnnotator pipeline.",
        "tags": ["autoannotator"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
                 "current": {}, "hide": 0},
                _variable("namespace", "label_values(autoannotator_records_in_total, namespace)", "Namespace"),
                _variable("job", 'label_values(autoannotator_records_in_total{namespace=~"$namespace"}, job)', "Job"),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    """The dashboard JSON as written to disk."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def queries(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel."""
    return [
        (str(panel["title"]), str(target["expr"]))
        for panel in dashboard["panels"]  # type: ignore[union-attr]
        for target in panel.get("targets", [])
    ]


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, verify) the dashboard files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a written file differs from the generated one")
    args = parser.parse_args(argv)
    text = render()
    stale = [p for p in OUTPUTS if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python deploy/grafana/dashboard.py", file=sys.stderr)
        return 1 if stale else 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
