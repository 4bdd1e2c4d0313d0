"""Several replicas of every service in one consumer group, with replicas killed and added mid-stream.

Each replica is its own process (:class:`~tests.helpers.fleet.Fleet`); a replica killed with
SIGKILL stays dead and its partitions move to the others, one added takes partitions from them
(the fast test under the default range assignor, the slow one under cooperative-sticky). The
audit must show every input id with an outcome (0 lost) and no id with two different ones (0
conflicting); duplicates of one outcome are allowed (at-least-once) and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from autoannotator.config import PipelineConfig
from autoannotator.mockllm import Gold, MockLLM
from autoannotator.tools.audit import AuditReport, audit_topics
from autoannotator.wire import Prediction, PredictionStatus, TextRecord

from tests.helpers.fleet import Fleet
from tests.helpers.kafka import send, send_texts
from tests.helpers.pipeline import LABELS, OutcomeWatcher, gold_for, make_texts

PARTITIONS = 6


def _config(make_config: Callable[..., PipelineConfig], root, llm_url: str, **sections) -> PipelineConfig:
    return make_config(
        kafka={"partitions": PARTITIONS, "session_timeout_ms": 3000},
        voter={"policy": "vote", "eps": 0.3, "audit_rate": 0.1, "join_timeout_s": 20, "quorum": 2},
        reviewer={"mode": "llm", "cache_path": str(root / "cache.sqlite"),
                  "llm": {"base_url": llm_url, "model": "mock", "batch_size": 4, "concurrency": 2,
                          "backoff_initial_s": 0.1, "backoff_max_s": 1.0}},
        trainer={"enabled": False},
        data_dir=str(root / "data"),
        **sections,
    )


def _predictions(texts: dict[str, str]) -> list[tuple[str, bytes]]:
    """What two specialists would say: they agree on two records in three and disagree on the third."""
    items = []
    for i, (rid, text) in enumerate(texts.items()):
        for specialist in ("s1", "s2"):
            top = 2 if specialist == "s1" or i % 3 else 0
            probs = [0.1, 0.1, 0.1]
            probs[top] = 0.8
            items.append((rid, Prediction(
                record_id=rid, specialist=specialist, model_version="v1", probs=probs, labels=LABELS,
                status=PredictionStatus.PREDICTION_STATUS_OK, record=TextRecord(id=rid, text=text),
            ).SerializeToString()))
    return items


def _mock(gold: dict[str, str]) -> MockLLM:
    labels = Gold()
    for rid, label in gold.items():
        labels.add(label, record_id=rid)
    return MockLLM(labels, labels=LABELS, latency_ms=50)


def _check(report: AuditReport, inputs: int) -> None:
    print(f"replicas run: inputs={report.inputs} lost={len(report.lost)} conflicting={len(report.conflicting)} "
          f"duplicates={report.duplicate_messages} by source={report.labels_by_source}")
    assert report.inputs == inputs
    assert report.lost == []
    assert report.conflicting == []
    assert report.unexpected == []


@pytest.mark.timeout(240)
def test_voters_and_reviewers_killed_and_added_mid_stream_lose_nothing(make_config, kafka_bootstrap, tmp_path):
    waves = [make_texts(60, prefix=f"w{n}-") for n in range(4)]
    everything = {rid: text for wave in waves for rid, text in wave.items()}
    mock = _mock(gold_for(everything))
    config = _config(make_config, tmp_path, mock.start_in_thread(), specialists=[{"name": "s1"}, {"name": "s2"}])
    watcher = OutcomeWatcher(config, kafka_bootstrap)
    try:
        with Fleet(config, kafka_bootstrap, tmp_path / "fleet") as fleet:
            names = [fleet.add(service) for service in ("voter", "voter", "reviewer", "reviewer")]
            for name in names:
                fleet.wait_assigned(name)
            for n, wave in enumerate(waves):
                send_texts(config, kafka_bootstrap, wave)  # the inputs the audit accounts for
                send(config, kafka_bootstrap, "predictions", _predictions(wave))
                if n == 1:  # mid-stream: one replica of each dies, another joins
                    time.sleep(0.3)
                    fleet.kill9("voter#0")
                    fleet.kill9("reviewer#0")
                    fleet.add("voter")
                    fleet.add("reviewer")
            watcher.wait_for(everything, 150)
            moved = {name: len(fleet.assigned(name)) for name in ("voter#1", "reviewer#1")}
            joined = {name: fleet.assigned(name) for name in ("voter#2", "reviewer#2")}
    finally:
        watcher.close()
        mock.stop_thread()
    assert all(count >= 2 for count in moved.values())  # the survivors took partitions over
    assert all(any(parts != "[]" for parts in got) for got in joined.values())  # the new ones got some
    _check(audit_topics(config, kafka_bootstrap, timeout_s=5), len(everything))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_service_with_two_replicas_killed_and_added_mid_stream_loses_nothing(
    make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact
):
    from autoannotator.artifacts.store import ModelStore

    store = ModelStore(f"file://{tmp_path / 'store'}")
    for name, artifact in (("s1", tiny_artifact), ("s2", second_artifact)):
        store.set_current(name, store.publish(name, artifact).version)
    waves = [make_texts(100, prefix=f"w{n}-") for n in range(4)]
    everything = {rid: text for wave in waves for rid, text in wave.items()}
    mock = _mock(gold_for(everything))
    config = _config(make_config, tmp_path, mock.start_in_thread(), store={"uri": store.uri},
                     specialists=[{"name": n, "threads": 1, "max_wait_ms": 5} for n in ("s1", "s2")])
    config.kafka.assignment_strategy = "cooperative-sticky"  # the assignor for Kafka proper (README)
    services = ("specialist-s1", "specialist-s2", "voter", "reviewer")
    watcher = OutcomeWatcher(config, kafka_bootstrap)
    try:
        with Fleet(config, kafka_bootstrap, tmp_path / "fleet") as fleet:
            names = [fleet.add(service) for service in services for _ in range(2)]
            for name in names:
                fleet.wait_assigned(name, 180)
            for n, wave in enumerate(waves):
                send_texts(config, kafka_bootstrap, wave)
                if n == 1:
                    time.sleep(0.5)
                    for service in services:
                        fleet.kill9(f"{service}#0")
                        fleet.add(service)
            watcher.wait_for(everything, 400)
    finally:
        watcher.close()
        mock.stop_thread()
    _check(audit_topics(config, kafka_bootstrap, timeout_s=5), len(everything))
