"""Spend accounting and limits: priced from usage, sliding hourly window, total limit, persisted."""

from __future__ import annotations

import math

import pytest
from autoannotator.config import BudgetConfig, LLMPrice
from autoannotator.exceptions import ConfigError
from autoannotator.reviewer.budget import Budget
from autoannotator.reviewer.exceptions import BudgetExhausted
from prometheus_client import REGISTRY

from tests.helpers.clock import ManualClock

PRICES = {"m": LLMPrice(input_per_mtok=1.0, output_per_mtok=4.0)}


def test_usage_is_priced_per_million_tokens_by_model() -> None:
    budget = Budget(BudgetConfig(), PRICES)
    assert budget.charge("m", 1_000_000, 250_000) == pytest.approx(2.0)
    assert budget.charge("unpriced", 1000, 1000) == 0.0
    assert budget.total_usd == pytest.approx(2.0)


def test_tokens_and_cost_are_counted_in_metrics() -> None:
    before_prompt = REGISTRY.get_sample_value("autoannotator_llm_tokens_total", {"kind": "prompt"}) or 0
    before_cost = REGISTRY.get_sample_value("autoannotator_llm_cost_usd_total") or 0
    Budget(BudgetConfig(), PRICES).charge("m", 500_000, 0)
    assert REGISTRY.get_sample_value("autoannotator_llm_tokens_total", {"kind": "prompt"}) - before_prompt == 500_000
    assert REGISTRY.get_sample_value("autoannotator_llm_cost_usd_total") - before_cost == pytest.approx(0.5)


def test_hourly_limit_blocks_until_the_window_slides_past_the_spend() -> None:
    clock = ManualClock()
    budget = Budget(BudgetConfig(max_usd_per_hour=1.0), PRICES, clock=clock)
    budget.charge("m", 600_000, 0)  # $0.60 at t0
    clock.now += 600
    budget.charge("m", 500_000, 0)  # $0.50 at t0+600: the window holds $1.10
    with pytest.raises(BudgetExhausted) as err:
        budget.check()
    assert "max_usd_per_hour" in str(err.value)
    assert err.value.retry_at == pytest.approx(clock.now - 600 + 3600)
    assert budget.state == 1
    assert REGISTRY.get_sample_value("autoannotator_llm_budget_state") == 1
    clock.now += 3000  # t0+3600: the first $0.60 slid out
    budget.check()
    assert budget.state == 0


def test_total_limit_blocks_for_good() -> None:
    budget = Budget(BudgetConfig(max_usd_total=0.5), PRICES)
    budget.charge("m", 500_000, 0)
    assert budget.blocked_until() == math.inf
    with pytest.raises(BudgetExhausted, match="max_usd_total"):
        budget.check()
    assert budget.state == 2


def test_spend_survives_a_restart(tmp_path) -> None:
    clock = ManualClock()
    path = tmp_path / "cache.sqlite"
    first = Budget(BudgetConfig(max_usd_total=10), PRICES, path=path, clock=clock)
    first.charge("m", 2_000_000, 0)
    first.close()
    second = Budget(BudgetConfig(max_usd_total=10), PRICES, path=path, clock=clock)
    assert second.total_usd == pytest.approx(2.0)
    assert second.window_usd() == pytest.approx(2.0)


def test_limits_without_a_price_for_the_model_are_a_config_error() -> None:
    budget = Budget(BudgetConfig(max_usd_total=1.0), PRICES)
    with pytest.raises(ConfigError, match=r"reviewer\.llm\.prices"):
        budget.require_price("gpt-unknown")
