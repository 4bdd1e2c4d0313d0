"""Error-bounded routing in the voter: the audit stream, per-version calibration, thresholds that survive kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from autoannotator.config import PipelineConfig
from autoannotator.errorbound import audit_chosen
from autoannotator.stream.broker import free_port
from autoannotator.stream.reader import TopicReader
from autoannotator.voter.audit import AuditWindow, Calibrations
from autoannotator.voter.service import Voter
from autoannotator.wire import (
    HardSample,
    ModelRelease,
    Prediction,
    PredictionStatus,
    RawMessage,
    ReviewedSample,
    TextRecord,
)

from tests.helpers.kafka import send
from tests.helpers.metrics import counter

LABELS = ["negative", "neutral", "positive"]
NAMES = ["s1", "s2", "s3"]
OK = PredictionStatus.PREDICTION_STATUS_OK


class Sink:
    """Collects what the voter sends (the loop's Outbox, minus Kafka)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[str, object]]] = {}

    def send(self, topic: str, key: str, value: object) -> None:
        self.sent.setdefault(topic, []).append((key, value))

    def ids(self, topic: str) -> list[str]:
        return [key for key, _ in self.sent.get(topic, [])]


def vector(top: int, p: float) -> list[float]:
    rest = (1.0 - p) / 2
    return [p if i == top else rest for i in range(3)]


def predictions(rid: str, top: int, p: float, versions: dict[str, str] | None = None) -> list[Prediction]:
    versions = versions or {}
    return [Prediction(record_id=rid, specialist=name, model_version=versions.get(name, "v1"), status=OK,
                       probs=vector(top, p), labels=LABELS, record=TextRecord(id=rid, text=f"text {rid}"))
            for name in NAMES]


def feed(voter: Voter, records: list[list[Prediction]]) -> Sink:
    sink = Sink()
    offset = 0
    batch = []
    for preds in records:
        for pred in preds:
            batch.append(RawMessage("predictions", 0, offset, pred.record_id.encode(), pred.SerializeToString(), 0))
            offset += 1
    voter.handle(batch, sink)  # type: ignore[arg-type]
    return sink


def audit_sample(rid: str, score: float, right: bool, versions: dict[str, str] | None = None) -> ReviewedSample:
    """A reviewed audit sample: consensus said label 0 with ``score``; the reviewer agreed when ``right``."""
    return ReviewedSample(record_id=rid, label=LABELS[0] if right else LABELS[2], audit=True,
                          consensus_label=LABELS[0], predictions=predictions(rid, 0, score, versions))


def certifiable_window(voter: Voter, n: int = 400, versions: dict[str, str] | None = None) -> None:
    """Audit outcomes where consensus above 0.8 is always right and below 0.6 mostly wrong."""
    rng = random.Random(3)
    for i in range(n):
        score = rng.choice([0.9, 0.95, 0.5])
        voter.window.add_reviewed(audit_sample(f"a{i}", score, right=score > 0.8 or rng.random() < 0.3,
                                               versions=versions))
    voter.window.refresh()


@pytest.fixture
def eb_config(make_config: Callable[..., PipelineConfig]) -> PipelineConfig:
    return make_config(create=False, specialists=[{"name": n} for n in NAMES],
                       voter={"policy": "error-bounded", "target_error": 0.05, "audit_rate": 0.0,
                              "min_audit_samples": 30, "quorum": 2})


def test_without_audit_outcomes_every_record_goes_to_review_as_an_audit_sample(eb_config: PipelineConfig) -> None:
    voter = Voter(eb_config)
    sink = feed(voter, [predictions(f"r{i}", 0, 0.99) for i in range(20)])
    assert sink.ids("labels") == []
    hard = [value for _, value in sink.sent["hard"]]
    assert len(hard) == 20
    assert all(h.audit and h.reason == "uncertified" and h.consensus_label == "negative" for h in hard)
    assert all(h.score == pytest.approx(0.99, abs=1e-6) for h in hard)


def test_once_audits_certify_a_threshold_confident_records_are_accepted_and_doubtful_ones_reviewed(
    eb_config: PipelineConfig,
) -> None:
    voter = Voter(eb_config)
    certifiable_window(voter)
    chosen = voter.window.certified(tuple((n, "v1") for n in NAMES))
    # The lowest grid threshold above the doubtful 0.5 outcomes: accepting those would break the bound.
    assert chosen.certified and chosen.threshold == pytest.approx(0.51) and chosen.upper <= 0.05
    sink = feed(voter, [predictions("sure", 0, 0.95), predictions("doubt", 1, 0.5)])
    assert sink.ids("labels") == ["sure"]
    [(rid, hard)] = sink.sent["hard"]
    assert rid == "doubt" and hard.reason == "low_confidence" and not hard.audit


def test_audit_samples_are_chosen_by_id_and_a_replay_chooses_the_same(
    make_config: Callable[..., PipelineConfig],
) -> None:
    config = make_config(create=False, specialists=[{"name": n} for n in NAMES],
                         voter={"policy": "vote", "audit_rate": 0.2})
    records = [predictions(f"rec-{i}", i % 3, 0.9) for i in range(300)]
    first = feed(Voter(config), records)
    replay = feed(Voter(config), records)  # a restarted voter re-reading the same predictions
    audited = [rid for rid, hard in first.sent["hard"] if hard.reason == "audit" and hard.audit]
    assert audited == [rid for rid, hard in replay.sent["hard"] if hard.reason == "audit"]
    assert set(audited) == {f"rec-{i}" for i in range(300) if audit_chosen(f"rec-{i}", 0.2)}
    assert 30 <= len(audited) <= 90
    assert set(first.ids("labels")) == {f"rec-{i}" for i in range(300)} - set(audited)


def test_a_temperature_is_never_applied_to_another_version(make_config: Callable[..., PipelineConfig]) -> None:
    config = make_config(create=False, specialists=[{"name": n} for n in NAMES],
                         voter={"policy": "soft", "tau": 0.0, "audit_rate": 0.0,
                                "temperatures": {n: {"v1": 0.5} for n in NAMES}})
    voter = Voter(config)
    old = feed(voter, [predictions("old", 0, 0.6)]).sent["labels"][0][1]
    new = feed(voter, [predictions("new", 0, 0.6, {n: "v2" for n in NAMES})]).sent["labels"][0][1]
    assert old.confidence > 0.8  # v1 scaled with its own temperature (sharpened)
    assert new.confidence == pytest.approx(0.6, abs=1e-6)  # v2 has none: uncalibrated, not v1's
    # A release's temperature applies to its own version only.
    for name in NAMES:
        voter.window.add_release(ModelRelease(specialist=name, version="v2", temperature=2.0))
    newer = feed(voter, [predictions("newer", 0, 0.6, {n: "v2" for n in NAMES})]).sent["labels"][0][1]
    again = feed(voter, [predictions("again", 0, 0.6)]).sent["labels"][0][1]
    assert newer.confidence < 0.6
    assert again.confidence == pytest.approx(old.confidence, abs=1e-6)


def test_a_new_version_set_restarts_its_window_and_releases_can_seed_it(eb_config: PipelineConfig) -> None:
    voter = Voter(eb_config)
    certifiable_window(voter)
    restarts = counter("autoannotator_voter_window_restarts_total", start="empty")
    v2 = {"s1": "v2"}
    sink = feed(voter, [predictions("after-release", 0, 0.95, v2)])
    [(_, hard)] = sink.sent["hard"]
    assert hard.reason == "uncertified" and hard.audit  # v1's outcomes say nothing about s1@v2
    assert counter("autoannotator_voter_window_restarts_total", start="empty") == restarts + 1
    # Releases carrying each version's predictions on held-out audit samples seed a new set at once.
    rng = random.Random(5)
    held = [(f"h{i}", rng.choice([0.95, 0.5])) for i in range(300)]
    for name in NAMES:
        version = "v3" if name == "s1" else "v1"
        voter.window.add_release(ModelRelease(specialist=name, version=version, holdout=[
            {"record_id": rid, "label": LABELS[0] if p > 0.8 else LABELS[2], "probs": vector(0, p)}
            for rid, p in held]))
    sink = feed(voter, [predictions("seeded", 0, 0.95, {"s1": "v3"})])
    assert sink.ids("labels") == ["seeded"]
    assert voter.window.window_size((("s1", "v3"), ("s2", "v1"), ("s3", "v1"))) == 300


def test_an_audit_outcome_counts_once_however_often_it_is_read() -> None:
    window = AuditWindow(LABELS, NAMES, Calibrations(), target_error=0.1, min_samples=5)
    for _ in range(3):
        window.add_reviewed(audit_sample("same", 0.9, right=True))
    window.add_reviewed(ReviewedSample(record_id="not-audit", label="negative", predictions=predictions("x", 0, 0.9)))
    assert window.window_size(tuple((n, "v1") for n in NAMES)) == 1


# -- through the broker: the threshold survives a kill -9 ----------------------------------------------

def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def _start_voter(config_file: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUTOANNOTATOR_LOG": "INFO"}
    env.pop("AUTOANNOTATOR_KAFKA_BOOTSTRAP", None)
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "autoannotator.cli", "voter", "--config", str(config_file),
                                 "--metrics-port", str(port)], stdout=out, stderr=out, env=env)


def _decide(config: PipelineConfig, bootstrap: str, rid: str, port: int) -> tuple[str, float]:
    """Send one confident record's predictions; return where it went and the voter's threshold gauge."""
    send(config, bootstrap, "predictions", ((p.record_id, p.SerializeToString()) for p in predictions(rid, 0, 0.95)))
    readers = [TopicReader(config.kafka, bootstrap, topic) for topic in ("labels", "hard")]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for reader in readers:
                for msg in reader.poll(0.2):
                    if msg.record_id == rid:
                        return reader.logical_topic, _metric(port, "autoannotator_voter_threshold") or -1.0
    finally:
        for reader in readers:
            reader.close()
    raise AssertionError(f"no outcome for {rid}")


def test_a_restarted_voter_resumes_with_the_same_threshold(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tmp_path: Path
) -> None:
    config = make_config(specialists=[{"name": n} for n in NAMES], data_dir=str(tmp_path / "data"),
                         voter={"policy": "error-bounded", "target_error": 0.05, "audit_rate": 0.0,
                                "join_timeout_s": 60})
    rng = random.Random(11)
    samples = []
    for i in range(300):
        score = rng.choice([0.9, 0.95, 0.5])
        samples.append(audit_sample(f"a{i}", score, right=score > 0.8 or rng.random() < 0.3))
    send(config, kafka_bootstrap, "reviewed", ((s.record_id, s.SerializeToString()) for s in samples))
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    log = tmp_path / "voter.log"

    port = free_port()
    first = _start_voter(config_file, port, log)
    try:
        topic, before = _decide(config, kafka_bootstrap, "r1", port)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert topic == "labels", log.read_text()  # certified from the audit outcomes: not the conservative start
    assert before == pytest.approx(0.51)

    port = free_port()
    second = _start_voter(config_file, port, log)
    try:
        topic, after = _decide(config, kafka_bootstrap, "r2", port)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert topic == "labels"
    assert after == before


def test_hard_samples_carry_the_audit_flag_to_the_reviewer(eb_config: PipelineConfig) -> None:
    sink = feed(Voter(eb_config), [predictions("x", 2, 0.7)])
    [(_, hard)] = sink.sent["hard"]
    assert isinstance(hard, HardSample)
    decoded = HardSample.FromString(hard.SerializeToString())
    assert decoded.audit and decoded.consensus_label == "positive" and decoded.score == pytest.approx(0.7)
