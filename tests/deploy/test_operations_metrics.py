"""What an operator's dashboards and autoscaler read: lag of owned partitions only, end-to-end
record age, budget limits and spend, probes that answer before a slow start-up, consumer groups."""

from __future__ import annotations

import argparse
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

import pytest
from autoannotator.config import KafkaConfig, PipelineConfig
from autoannotator.reviewer.budget import Budget
from autoannotator.runtime import start_probes
from autoannotator.specialist.service import group_id
from autoannotator.stream import Outbox, Processor, ServiceLoop
from autoannotator.v1.records_pb2 import Prediction, PredictionStatus, TextRecord
from autoannotator.voter.service import Voter
from autoannotator.wire import RawMessage, now_ms
from prometheus_client import REGISTRY

from tests.helpers.kafka import running, send_texts

LABELS = ["negative", "neutral", "positive"]


class Sink(Processor):
    """Consumes texts and writes nothing."""

    topics = ("texts",)

    def handle(self, batch: Sequence[RawMessage], out: Outbox) -> None:
        return None


def _lag_partitions(service: str) -> set[str]:
    return {
        sample.labels["partition"]
        for metric in REGISTRY.collect() if metric.name == "autoannotator_consumer_lag"
        for sample in metric.samples if sample.labels.get("service") == service
    }


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_a_revoked_partitions_lag_series_disappears(make_config, kafka_bootstrap) -> None:
    config = make_config()  # 3 partitions
    send_texts(config, kafka_bootstrap, {f"l{i}": "text" for i in range(30)})
    group = config.kafka.group("lag")
    first = ServiceLoop(config, "lag-first", Sink(), bootstrap=kafka_bootstrap, group_id=group, metrics_port=0)
    with running(first):
        # librdkafka reports lag every 5 s: first owns all three partitions and reports each.
        assert _wait(lambda: _lag_partitions("lag-first") == {"0", "1", "2"}, 30), _lag_partitions("lag-first")
        second = ServiceLoop(config, "lag-second", Sink(), bootstrap=kafka_bootstrap, group_id=group,
                             metrics_port=0)
        with running(second):
            assert _wait(lambda: bool(_lag_partitions("lag-second")), 40), "the second member never reported lag"
            # After the rebalance each partition is reported by its owner only: no stale series left behind.
            assert _wait(lambda: not _lag_partitions("lag-first") & _lag_partitions("lag-second"), 20)
            owned_by_first = {str(p) for _, p in first._assigned}
            assert _lag_partitions("lag-first") <= owned_by_first
            assert len(owned_by_first) < 3


def _age_count(stage: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(
        "autoannotator_record_age_seconds_count", {"stage": stage, "outcome": outcome}) or 0.0


def _age_sum(stage: str, outcome: str) -> float:
    return REGISTRY.get_sample_value(
        "autoannotator_record_age_seconds_sum", {"stage": stage, "outcome": outcome}) or 0.0


class RecordingOutbox:
    """Keeps what the processor sends (the real Outbox needs a producer)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, topic: str, key: str, value: object) -> None:
        self.sent.append((topic, key))


def test_record_age_histogram_counts_every_decided_record_once(make_config) -> None:
    config = make_config(create=False, specialists=[{"name": "s1"}, {"name": "s2"}, {"name": "s3"}],
                         voter={"join_timeout_s": 5})
    clock = [100.0]
    voter = Voter(config, clock=lambda: clock[0])
    outcomes = ("label", "hard", "rejected")
    before = {o: (_age_count("voter", o), _age_sum("voter", o)) for o in outcomes}
    created = now_ms() - 3_000  # every record entered the pipeline 3 s ago
    batch, offset = [], 0

    def add(rid: str, specialist: str, probs: list[float], status: int = PredictionStatus.PREDICTION_STATUS_OK) -> None:
        nonlocal offset
        prediction = Prediction(record_id=rid, specialist=specialist, probs=probs, labels=LABELS, status=status,
                                record=TextRecord(id=rid, text="t", created_ms=created), produced_ms=now_ms())
        batch.append(RawMessage("predictions", 0, offset, rid.encode(), prediction.SerializeToString(), 0))
        offset += 1

    for i in range(20):  # unanimous: labels
        for s in ("s1", "s2", "s3"):
            add(f"agree{i}", s, [0.1, 0.1, 0.8])
    for i in range(7):  # split votes: hard
        for s, probs in zip(("s1", "s2", "s3"), ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]), strict=True):
            add(f"split{i}", s, probs)
    for i in range(5):  # unusable input: rejected
        for s in ("s1", "s2", "s3"):
            add(f"bad{i}", s, [], PredictionStatus.PREDICTION_STATUS_BAD_INPUT)
    for i in range(4):  # one prediction only: decided when the join times out
        add(f"late{i}", "s1", [0.1, 0.1, 0.8])
    out = RecordingOutbox()
    voter.handle(batch, out)  # type: ignore[arg-type]
    clock[0] += 6
    voter.tick(out)  # type: ignore[arg-type]

    routed = {o: sum(1 for topic, _ in out.sent if topic == {"label": "labels"}.get(o, o)) for o in outcomes}
    assert sum(routed.values()) == voter.decided == 36
    for outcome in outcomes:
        count = _age_count("voter", outcome) - before[outcome][0]
        assert count == routed[outcome], outcome
        # Each observation is the record's age at decision time: at least the 3 s since created_ms.
        assert _age_sum("voter", outcome) - before[outcome][1] >= 3.0 * count


def test_budget_exports_its_limits_and_total_spend(tmp_path) -> None:
    from autoannotator.config import BudgetConfig, LLMPrice

    prices = {"m": LLMPrice(input_per_mtok=1.0, output_per_mtok=2.0)}
    budget = Budget(BudgetConfig(max_usd_per_hour=2.5, max_usd_total=40.0), prices, path=tmp_path / "spend.sqlite")
    assert REGISTRY.get_sample_value("autoannotator_llm_budget_limit_usd", {"window": "hour"}) == 2.5
    assert REGISTRY.get_sample_value("autoannotator_llm_budget_limit_usd", {"window": "total"}) == 40.0
    budget.charge("m", 1_000_000, 500_000)  # 1 + 1 USD
    assert REGISTRY.get_sample_value("autoannotator_llm_spend_total_usd") == pytest.approx(2.0)
    budget.close()
    # The total is kept in the spend store: a restarted reviewer reports it again.
    again = Budget(BudgetConfig(max_usd_per_hour=2.5), prices, path=tmp_path / "spend.sqlite")
    assert REGISTRY.get_sample_value("autoannotator_llm_spend_total_usd") == pytest.approx(2.0)
    again.close()


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_probes_answer_before_the_service_starts_and_readiness_follows_the_loop(make_config, kafka_bootstrap) -> None:
    config: PipelineConfig = make_config()
    probes = start_probes(config, argparse.Namespace(metrics_port=0))
    try:
        # A slow model fetch happens here: alive, not ready, metrics served.
        assert _status(f"{probes.url}/healthz") == 200
        assert _status(f"{probes.url}/readyz") == 503
        assert _status(f"{probes.url}/metrics") == 200
        loop = ServiceLoop(config, "probe-early", Sink(), bootstrap=kafka_bootstrap, metrics=probes)
        with running(loop):
            assert loop.metrics is probes
            assert _wait(lambda: _status(f"{probes.url}/readyz") == 200, 20)
    finally:
        probes.stop()


def test_consumer_groups_derive_from_the_topic_prefix() -> None:
    assert KafkaConfig().group("voter") == "autoannotator-voter"  # the default prefix keeps the old names
    assert group_id("s1") == "autoannotator-specialist-s1"
    prefixed = KafkaConfig(topic_prefix="team-a.")
    assert prefixed.group("voter") == "team-a.autoannotator-voter"
    assert group_id("s1", prefixed) == "team-a.autoannotator-specialist-s1"


def test_reviewer_record_age_counts_every_label_and_rejection(make_config, kafka_bootstrap, tmp_path) -> None:
    from autoannotator.mockllm import MockLLM
    from autoannotator.reviewer.service import Reviewer

    from tests.helpers.kafka import send
    from tests.helpers.reviewer import LABELS as REVIEW_LABELS
    from tests.helpers.reviewer import dataset, group, hard_items, read_topic

    texts, gold = dataset(6, "age")
    mock = MockLLM(gold, labels=REVIEW_LABELS)
    url = mock.start_in_thread()
    try:
        config = make_config(reviewer={"mode": "llm", "cache_path": str(tmp_path / "cache.sqlite"), "llm": {
            "base_url": url, "batch_size": 3, "model": "mock", "timeout_s": 2.0,
            "prices": {"mock": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}}})
        before = {o: _age_count("reviewer", o) for o in ("label", "rejected")}
        loop = ServiceLoop(config, "reviewer", Reviewer(config), group_id=group(config), bootstrap=kafka_bootstrap)
        with running(loop):
            send(config, kafka_bootstrap, "hard", [*hard_items(texts), ("junk", b"\xff\xff not protobuf")])
            labels = read_topic(config, kafka_bootstrap, "labels", lambda got: len(got) >= len(texts))
            rejected = read_topic(config, kafka_bootstrap, "rejected", lambda got: len(got) >= 1)
            assert _wait(lambda: _age_count("reviewer", "label") - before["label"] >= len(labels), 10)
    finally:
        mock.stop_thread()
    assert len(labels) == len(texts) and len(rejected) == 1
    assert _age_count("reviewer", "label") - before["label"] == len(labels)
    assert _age_count("reviewer", "rejected") - before["rejected"] == len(rejected)


def test_models_add_if_empty_seeds_once_from_a_uri_and_names_an_empty_location(
    make_config, tiny_artifact, tmp_path, capsys,
) -> None:
    from autoannotator.artifacts.store import ModelStore
    from autoannotator.cli import main
    from autoannotator.config import dump_config

    config = make_config(create=False, store={"uri": f"file://{tmp_path / 'store'}"},
                         specialists=[{"name": "sent"}], voter={"quorum": 1})
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(dump_config(config))
    seed = ["models", "add", "--config", str(cfg), "--name", "sent", "--if-empty"]
    # A URI (here memory://, as s3:// is in tests/deploy/test_image_targets.py) is fetched with store.options.
    import fsspec

    fsspec.filesystem("memory").put(str(tiny_artifact), "/seed/sent", recursive=True)
    assert main([*seed, "memory://seed/sent"]) == 0
    assert main([*seed, "memory://seed/sent"]) == 0  # a later upgrade's hook: nothing added
    assert "--if-empty: nothing added" in capsys.readouterr().out
    assert ModelStore(f"file://{tmp_path / 'store'}").versions("sent") == ["v0001"]
    assert main(["models", "add", "--config", str(cfg), "--name", "sent", "memory://nothing/here"]) != 0
    assert "memory://nothing/here: no files there" in capsys.readouterr().err
