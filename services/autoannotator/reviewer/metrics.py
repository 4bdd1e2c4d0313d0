"""Prometheus metrics of the reviewer: LLM requests, tokens, spend, budget, cache, decisions."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LLM_REQUESTS = Counter("autoannotator_llm_requests", "Chat-completions requests by outcome", ["status"])
LLM_TOKENS = Counter("autoannotator_llm_tokens", "Tokens reported in responses' usage", ["kind"])
LLM_COST = Counter("autoannotator_llm_cost_usd", "LLM spend in USD, priced from usage with llm.prices")
LLM_LATENCY = Histogram(
    "autoannotator_llm_request_seconds",
    "Latency of one chat-completions request (one attempt)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
)
LLM_BATCH_RECORDS = Histogram(
    "autoannotator_llm_batch_records", "Records per chat-completions request", buckets=(1, 2, 5, 10, 20, 50, 100, 200)
)
# 0: spending allowed; 1: hourly window full (paused until it slides); 2: total budget reached.
BUDGET_STATE = Gauge("autoannotator_llm_budget_state", "Budget state: 0 ok, 1 hourly limit reached, 2 total reached")
BUDGET_LIMIT = Gauge(
    "autoannotator_llm_budget_limit_usd",
    "Configured spend limit in USD, by window (hour: reviewer.budget.max_usd_per_hour, total: max_usd_total)",
    ["window"],
)
SPEND_TOTAL = Gauge(
    "autoannotator_llm_spend_total_usd", "USD spent in total (kept across restarts with the budget store)"
)
SPEND_WINDOW = Gauge("autoannotator_llm_spend_last_hour_usd", "USD spent in the sliding one-hour window")
BREAKER_OPEN = Gauge("autoannotator_llm_breaker_open", "1 while the circuit breaker keeps requests from the endpoint")
CACHE = Counter("autoannotator_llm_cache", "Label cache lookups", ["result"])
DECISIONS = Counter("autoannotator_reviewer_decisions", "Hard records decided, by outcome", ["outcome"])
PENDING = Gauge("autoannotator_reviewer_pending", "Hard records consumed and not yet decided (held)")
REVIEW_QUEUE = Gauge("autoannotator_review_queue_items", "Items in the human review queue", ["status"])
LOGIN_FAILURES = Counter("autoannotator_review_login_failures", "Requests to the review page with a bad token")
RECORDS_REVIEWED = Counter(
    "autoannotator_reviewer_records",
    "Hard records labelled, by why they were reviewed: audit (consensus would have accepted them) or routed",
    ["kind"],
)
RECORD_COST = Counter(
    "autoannotator_reviewer_record_cost_usd",
    "LLM spend attributed to labelled records, by audit (extra review) or routed",
    ["kind"],
)
PAIR_KAPPA = Gauge("autoannotator_review_agreement_kappa",
                   "Cohen's kappa between two people on the records both labelled (reviewer.human.overlap)",
                   ["pair"])
PAIR_ITEMS = Gauge("autoannotator_review_agreement_items", "Records both people of a pair labelled", ["pair"])
LLM_HUMAN_AGREEMENT = Gauge("autoannotator_llm_human_agreement",
                            "Share of audited LLM labels a person gave the same label (reviewer.human_audit_rate)")
LLM_HUMAN_KAPPA = Gauge("autoannotator_llm_human_kappa", "Cohen's kappa between the LLM and people on audited records")
LLM_HUMAN_AUDITED = Gauge("autoannotator_llm_human_audited", "Audited LLM labels a person has answered")
INJECTION = Counter("autoannotator_reviewer_injection_suspected",
                    "Labelled records whose text reads like an instruction, by what the second opinion did",
                    ["result"])
