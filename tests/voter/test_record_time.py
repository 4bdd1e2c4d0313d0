"""Join on record time, over the broker: a lagging specialist is used within the timeout and counted after it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from autoannotator.config import PipelineConfig
from autoannotator.stream.kafka import make_producer
from autoannotator.wire import HardSample, Label

from tests.helpers.kafka import running
from tests.helpers.metrics import counter
from tests.voter.test_service import outcomes, prediction, voter_loop

pytestmark = pytest.mark.timeout(120)
TIMEOUT_S = 2.0


@pytest.fixture
def config(make_config: Callable[..., PipelineConfig]) -> PipelineConfig:
    return make_config(specialists=[{"name": "s1"}, {"name": "s2"}],
                       voter={"policy": "vote", "audit_rate": 0, "eps": 0.34, "quorum": 1,
                              "join_timeout_s": TIMEOUT_S})


def _produce(config: PipelineConfig, bootstrap: str, items: list[tuple[tuple[str, bytes], int]]) -> None:
    """Predictions with the timestamps their specialist stamped them with (epoch ms)."""
    producer = make_producer(config.kafka, bootstrap)
    for (key, value), stamp in items:
        producer.produce(config.kafka.topic("predictions"), value, key=key, timestamp=stamp)
    assert producer.flush(30) == 0


def test_a_lagging_specialist_is_used_within_the_timeout_and_counted_after_it(
    config: PipelineConfig, kafka_bootstrap: str
) -> None:
    # Everything is already on the broker when the voter starts, so it reads it all within moments:
    # only the predictions' own timestamps say that s2 lagged 1.5 s behind for some records, 3 s for others.
    start = int(time.time() * 1000) - 60_000
    on_time = [f"on{i}" for i in range(5)]
    lagging = [f"lag{i}" for i in range(5)]
    items = [(prediction(rid, "s1", 2), start) for rid in on_time + lagging]
    items += [(prediction(rid, "s2", 2), start + 1500) for rid in on_time]
    items += [(prediction(rid, "s2", 2), start + 3000) for rid in lagging]
    late_before = counter("autoannotator_voter_late_predictions_by_specialist_total", specialist="s2")
    _produce(config, kafka_bootstrap, items)
    with running(voter_loop(config, kafka_bootstrap)):
        seen = outcomes(config, kafka_bootstrap, set(on_time + lagging), settle_s=2.0)
    assert Counter(len(outs) for outs in seen.values()) == {1: 10}  # one outcome each
    for rid in on_time:  # s2's prediction came 1.5 s after s1's: within the timeout, so it votes
        [(topic, value)] = seen[rid]
        assert topic == "labels" and len(Label.FromString(value).votes) == 2
    for rid in lagging:  # 3 s after: decided on s1 alone at the timeout; s2's prediction counted as late
        [(topic, value)] = seen[rid]
        voted = Label.FromString(value).votes if topic == "labels" else HardSample.FromString(value).predictions
        assert [v.specialist for v in voted] == ["s1"]
    late = counter("autoannotator_voter_late_predictions_by_specialist_total", specialist="s2") - late_before
    assert late == len(lagging)
