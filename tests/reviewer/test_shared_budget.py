"""One budget for all reviewer replicas: spend on the compacted ``spend`` topic, summed by each replica."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from autoannotator.config import BudgetConfig, LLMPrice
from autoannotator.mockllm import MockLLM
from autoannotator.reviewer.budget import Budget
from autoannotator.reviewer.service import Reviewer
from autoannotator.reviewer.spend import BUCKET_S, SpendLedger
from autoannotator.stream.loop import ServiceLoop

from tests.helpers.clock import ManualClock
from tests.helpers.kafka import running, send
from tests.helpers.reviewer import LABELS, dataset, group, hard_items, read_topic
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
PRICES = {"m": LLMPrice(input_per_mtok=1.0, output_per_mtok=0.0)}


def test_every_replica_sees_the_whole_fleets_spend(make_config, kafka_bootstrap) -> None:
    config = make_config()
    with SpendLedger(config.kafka, kafka_bootstrap, "a") as a, SpendLedger(config.kafka, kafka_bootstrap, "b") as b:
        a.record(0.25)
        a.record(0.25)
        b.record(1.0)
        assert wait_until(lambda: a.total() == pytest.approx(1.5) and b.total() == pytest.approx(1.5), 10)
        assert a.spent_by("a") == pytest.approx(0.5) and b.spent_by("a") == pytest.approx(0.5)
    with SpendLedger(config.kafka, kafka_bootstrap, "a") as again:  # a restart under the same name
        assert again.total() == pytest.approx(1.5)
        again.record(0.5)
        assert again.spent_by("a") == pytest.approx(1.0)  # resumed, not restarted from zero


def test_the_fleets_hourly_window_slides_bucket_by_bucket(make_config, kafka_bootstrap) -> None:
    config = make_config()
    clock = ManualClock(1_000_020.0)
    with SpendLedger(config.kafka, kafka_bootstrap, "a", clock=clock) as a, \
            SpendLedger(config.kafka, kafka_bootstrap, "b", clock=clock) as b:
        budget = Budget(BudgetConfig(max_usd_per_hour=1.0), PRICES, clock=clock, ledger=a)
        budget.charge("m", 600_000, 0)  # $0.60 by replica a
        clock.now += 600
        b.record(0.5)  # $0.50 by replica b ten minutes later
        assert wait_until(lambda: budget.window_usd() == pytest.approx(1.1), 10)
        first_bucket = (1_000_020 // BUCKET_S) * BUCKET_S
        assert budget.blocked_until() == first_bucket + BUCKET_S + 3600  # when a's bucket leaves the hour
        clock.now = first_bucket + BUCKET_S + 3600
        assert budget.blocked_until() is None
        assert budget.window_usd() == pytest.approx(0.5)
        assert budget.total_usd == pytest.approx(1.1)


def test_two_replicas_sharing_a_budget_stop_together_near_it(make_config, kafka_bootstrap, tmp_path) -> None:
    limit = 1.0
    texts, gold = dataset(120, "sb")
    mock = MockLLM(gold, labels=LABELS, latency_ms=300)  # longer than the ledger's propagation (a poll)
    url = mock.start_in_thread()
    base = make_config(kafka={"partitions": 6}, reviewer={
        "mode": "llm", "budget": {"max_usd_total": limit},
        "llm": {"base_url": url, "model": "mock", "batch_size": 2, "concurrency": 2,
                # about $0.1 per request of two records
                "prices": {"mock": {"input_per_mtok": 600.0, "output_per_mtok": 600.0}}},
    })
    replicas = []
    for name in ("r1", "r2"):
        config = base.model_copy(deep=True)
        config.reviewer.budget.replica_id = name
        config.reviewer.cache_path = str(tmp_path / f"{name}.sqlite")
        replicas.append(Reviewer(config, bootstrap=kafka_bootstrap))
    loops = [ServiceLoop(base, "reviewer", r, group_id=group(base), bootstrap=kafka_bootstrap) for r in replicas]
    try:
        with running(loops[0]), running(loops[1]):
            assert wait_until(lambda: all(loop._assigned for loop in loops), 30)  # both in the group
            send(base, kafka_bootstrap, "hard", hard_items(texts))
            assert wait_until(lambda: all((r._paused_for or "").startswith("budget reached (total)")
                                          for r in replicas), 60)
            sent = len(mock.requests)
            labels = read_topic(base, kafka_bootstrap, "labels", lambda got: False, timeout_s=2)
            assert len(mock.requests) == sent  # both stopped: no request after the limit was seen
            assert wait_until(lambda: replicas[0].ledger.total() == replicas[1].ledger.total(), 10)
            spent = replicas[0].ledger.total()
            by_replica = {name: replicas[0].ledger.spent_by(name) for name in ("r1", "r2")}
    finally:
        mock.stop_thread()
    # The worst case (README): replicas x concurrency x (1 + ceil(propagation / request time)) requests
    # of at most batch_size records each; the requests here take longer than propagation.
    max_request_usd = max(m.cost.usd for m in labels) * 2
    overshoot = 2 * 2 * 2 * max_request_usd
    assert limit <= spent <= limit + overshoot
    assert all(usd > 0 for usd in by_replica.values())  # both replicas spent, and stopped on the fleet's sum
    assert sum(by_replica.values()) == pytest.approx(spent)
    assert sum(m.cost.usd for m in labels) <= spent + 1e-9
    assert 0 < len(labels) < len(texts)
    assert max(Counter(m.record_id for m in labels).values()) == 1
    assert all(r.budget.blocked_until() == math.inf for r in replicas)


def test_a_bad_replica_id_is_a_config_error_naming_the_field() -> None:
    from autoannotator.config import parse_config
    from autoannotator.exceptions import ConfigError

    with pytest.raises(ConfigError, match=r"reviewer\.budget\.replica_id"):
        parse_config({"task": {"labels": ["a", "b"]}, "reviewer": {"budget": {"replica_id": "has a/slash"}}})
