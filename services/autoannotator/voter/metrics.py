"""Prometheus metrics of the voter (module level, names start with ``autoannotator_voter_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_UNIT_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.34, 0.4, 0.5, 0.6, 0.67, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

DECISIONS = Counter(
    "autoannotator_voter_decisions_total",
    "Records decided, by route (label, hard, rejected) and reason (empty for accepted labels)",
    ["route", "reason", "policy"],
)
UNCERTAINTY = Histogram(
    "autoannotator_voter_uncertainty",
    "Uncertainty of each decided record (vote: 1 - max_votes/k; soft: 1 - top mean probability)",
    ["policy"],
    buckets=_UNIT_BUCKETS,
)
CONFIDENCE = Histogram(
    "autoannotator_voter_confidence",
    "Confidence of each decided record (mean probability of the chosen label)",
    ["policy"],
    buckets=_UNIT_BUCKETS,
)
PENDING = Gauge("autoannotator_voter_pending_records", "Records waiting for more predictions")
JOIN_WAIT = Histogram(
    "autoannotator_voter_join_wait_seconds",
    "Time from a record's first prediction to its decision",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LATE = Counter(
    "autoannotator_voter_late_predictions_total", "Predictions for an already decided record (ignored)"
)
LATE_BY_SPECIALIST = Counter(
    "autoannotator_voter_late_predictions_by_specialist_total",
    "Predictions that came after their record was decided without them (join timeout or bad input), by specialist",
    ["specialist"],
)
TEXT_MISSING = Counter(
    "autoannotator_voter_text_missing_total",
    "Decided records sent without their text: lean predictions whose text could not be read from texts",
)
DUPLICATES = Counter(
    "autoannotator_voter_duplicate_predictions_total",
    "Repeated predictions of one specialist for one record (ignored)",
)
STRAYS = Counter(
    "autoannotator_voter_stray_predictions_total",
    "Predictions that count as no vote: unknown specialist or unparseable message",
    ["kind"],
)
TIMEOUTS = Counter(
    "autoannotator_voter_timeouts_total",
    "Records whose join timed out, by what happened next (label, hard, rejected)",
    ["route"],
)

# -- error-bounded routing and the audit stream ----------------------------------------------------
# Gauges describe the version set of the most recently decided record (the one serving now).
THRESHOLD = Gauge(
    "autoannotator_voter_threshold",
    "Certified threshold on the calibrated mean probability (error-bounded); 1.01 while none is certified",
)
TARGET_ERROR = Gauge("autoannotator_voter_target_error", "The configured target error of accepted labels")
ERROR_ESTIMATE = Gauge(
    "autoannotator_voter_error_estimate",
    "Error of accepted labels measured on the audit window at the current threshold (-1: none accepted)",
)
ERROR_UPPER = Gauge(
    "autoannotator_voter_error_upper_bound",
    "Upper confidence bound on the error of accepted labels at the current threshold (1 while uncertified)",
)
AUDIT_WINDOW = Gauge(
    "autoannotator_voter_audit_window", "Audit outcomes in the window of the current version set"
)
AUDITS = Counter(
    "autoannotator_voter_audits_total",
    "Records sent to review as audit samples: extra (consensus would have accepted them) or routed "
    "(reviewed anyway, flagged so their outcome joins the audit sample)",
    ["kind"],
)
AUDIT_OUTCOMES = Counter(
    "autoannotator_voter_audit_outcomes_total",
    "Reviewed audit samples read back into the window, by whether consensus agreed with the reviewer",
    ["agreed"],
)
WINDOW_RESTARTS = Counter(
    "autoannotator_voter_window_restarts_total",
    "Version sets the voter met with no audit outcomes (empty) or with held-out outcomes from releases (seeded)",
    ["start"],
)
