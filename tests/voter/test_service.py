"""The Voter on the real broker: one outcome per record, timeouts, duplicates, kill -9 recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from autoannotator.config import PipelineConfig
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader
from autoannotator.voter.service import Voter
from autoannotator.wire import HardSample, Label, Prediction, PredictionStatus, Rejection, TextRecord

from tests.helpers.kafka import running, send
from tests.helpers.metrics import counter

SPECIALISTS = [{"name": "s1"}, {"name": "s2"}, {"name": "s3"}]
OUTCOME_TOPICS = ("labels", "hard", "rejected")
OK = PredictionStatus.PREDICTION_STATUS_OK


def prediction(rid: str, specialist: str, top: int, status: int = OK, reason: str = "") -> tuple[str, bytes]:
    probs = [0.1, 0.1, 0.1]
    probs[top] = 0.8
    msg = Prediction(record_id=rid, specialist=specialist, model_version=f"{specialist}-v1", status=status,
                     reason=reason, probs=probs if status == OK else [], record=TextRecord(id=rid, text=f"text {rid}"))
    return rid, msg.SerializeToString()


def outcomes(config: PipelineConfig, bootstrap: str, ids: set[str], timeout_s: float = 60.0,
             settle_s: float = 1.0) -> dict[str, list[tuple[str, bytes]]]:
    """Read labels/hard/rejected until every id has an outcome; returns id -> [(topic, value), ...]."""
    seen: dict[str, list[tuple[str, bytes]]] = {}
    readers = [TopicReader(config.kafka, bootstrap, topic) for topic in OUTCOME_TOPICS]
    try:
        deadline = time.monotonic() + timeout_s
        settled_at: float | None = None
        while time.monotonic() < deadline:
            for reader in readers:
                for msg in reader.poll(0.1):
                    seen.setdefault(msg.record_id, []).append((reader.logical_topic, msg.value or b""))
            if ids <= set(seen):
                # Keep reading a moment: a second outcome for an id would show up here.
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle_s:
                    break
    finally:
        for reader in readers:
            reader.close()
    return seen


def voter_loop(config: PipelineConfig, bootstrap: str) -> ServiceLoop:
    return ServiceLoop(config, "voter", Voter(config), bootstrap=bootstrap)


@pytest.fixture
def voter_config(make_config: Callable[..., PipelineConfig]) -> PipelineConfig:
    return make_config(specialists=SPECIALISTS, voter={"policy": "vote", "audit_rate": 0, "eps": 0.34, "quorum": 2,
                                                       "join_timeout_s": 1.5})


def test_interleaved_records_across_partitions_each_get_exactly_one_outcome(
    voter_config: PipelineConfig, kafka_bootstrap: str
) -> None:
    # 30 records: a third unanimous, a third three-way split, a third bad input; predictions of
    # different records interleave, and records spread over the topic's 3 partitions by key.
    expected: dict[str, str] = {}
    messages: list[tuple[str, bytes]] = []
    for i in range(30):
        rid = f"r{i}"
        kind = i % 3
        for j, spec in enumerate(("s1", "s2", "s3")):
            if kind == 0:
                messages.append(prediction(rid, spec, top=i % 3 + 0))
            elif kind == 1:
                messages.append(prediction(rid, spec, top=j))
            else:
                messages.append(prediction(rid, spec, 0, PredictionStatus.PREDICTION_STATUS_BAD_INPUT, "empty"))
        expected[rid] = ("labels", "hard", "rejected")[kind]
    interleaved = messages[0::3] + messages[1::3] + messages[2::3]
    send(voter_config, kafka_bootstrap, "predictions", interleaved)
    with running(voter_loop(voter_config, kafka_bootstrap)):
        seen = outcomes(voter_config, kafka_bootstrap, set(expected))
    assert {rid: [t for t, _ in outs] for rid, outs in seen.items()} == {rid: [t] for rid, t in expected.items()}
    for rid, [(topic, value)] in seen.items():
        if topic == "labels":
            label = Label.FromString(value)
            assert label.label == voter_config.task.labels[0]  # kind 0 records have i % 3 == 0
            assert label.record.text == f"text {rid}"
            assert sorted(label.model_versions) == ["s1", "s2", "s3"] and label.uncertainty == 0.0
        elif topic == "hard":
            hard = HardSample.FromString(value)
            assert hard.reason == "disagreement" and len(hard.predictions) == 3
            assert hard.uncertainty == pytest.approx(2 / 3)
        else:
            rejection = Rejection.FromString(value)
            assert rejection.reason == "empty" and rejection.stage == "voter"


def test_missing_specialist_is_decided_on_quorum_after_the_join_timeout(
    voter_config: PipelineConfig, kafka_bootstrap: str
) -> None:
    quorum_ids = {f"q{i}" for i in range(5)}  # s1 and s2 agree, s3 never answers
    lonely_ids = {f"l{i}" for i in range(5)}  # only s1 answers: below quorum
    messages = [prediction(rid, spec, 2) for rid in sorted(quorum_ids) for spec in ("s1", "s2")]
    messages += [prediction(rid, "s1", 2) for rid in sorted(lonely_ids)]
    timeouts_before = counter("autoannotator_voter_timeouts_total", route="hard")
    send(voter_config, kafka_bootstrap, "predictions", messages)
    with running(voter_loop(voter_config, kafka_bootstrap)):
        seen = outcomes(voter_config, kafka_bootstrap, quorum_ids | lonely_ids)
    for rid in quorum_ids:
        [(topic, value)] = seen[rid]
        label = Label.FromString(value)
        assert topic == "labels" and label.label == "positive" and len(label.votes) == 2
        assert label.uncertainty == pytest.approx(1 / 3)  # the missing vote counts against agreement
    for rid in lonely_ids:
        [(topic, value)] = seen[rid]
        assert topic == "hard" and HardSample.FromString(value).reason == "timeout"
    assert counter("autoannotator_voter_timeouts_total", route="hard") - timeouts_before == len(lonely_ids)


def test_duplicate_predictions_are_counted_and_decide_nothing_twice(
    voter_config: PipelineConfig, kafka_bootstrap: str
) -> None:
    ids = [f"d{i}" for i in range(10)]
    once = [prediction(rid, spec, 1) for rid in ids for spec in ("s1", "s2", "s3")]
    ignored = ("autoannotator_voter_duplicate_predictions_total", "autoannotator_voter_late_predictions_total")
    before = sum(counter(name) for name in ignored)
    send(voter_config, kafka_bootstrap, "predictions", once + once)
    with running(voter_loop(voter_config, kafka_bootstrap)):
        seen = outcomes(voter_config, kafka_bootstrap, set(ids), settle_s=2.0)
    assert Counter(len(outs) for outs in seen.values()) == {1: len(ids)}
    assert sum(counter(name) for name in ignored) - before == len(once)


def _write_config(config: PipelineConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path


def _start_voter(config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUTOANNOTATOR_LOG": "INFO"}
    env.pop("AUTOANNOTATOR_KAFKA_BOOTSTRAP", None)  # the bootstrap is in the config file
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "autoannotator.cli", "voter", "--config", str(config_file)],
                                stdout=out, stderr=out, env=env)


def _kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_kill_9_mid_stream_loses_no_record(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tmp_path: Path
) -> None:
    # A long join timeout: records pending at the crash can only be decided by re-reading them.
    config = make_config(specialists=SPECIALISTS, data_dir=str(tmp_path / "data"),
                         voter={"policy": "vote", "audit_rate": 0, "join_timeout_s": 120, "quorum": 3})
    config_file = _write_config(config, tmp_path / "pipeline.yaml")
    log = tmp_path / "voter.log"
    complete = [f"c{i}" for i in range(40)]  # all three predictions before the crash
    partial = [f"p{i}" for i in range(40)]  # s1 and s2 before the crash, s3 after the restart
    later = [f"n{i}" for i in range(40)]  # everything after the restart
    before = [prediction(rid, s, 0) for rid in complete for s in ("s1", "s2", "s3")]
    before += [prediction(rid, s, 1) for rid in partial for s in ("s1", "s2")]
    send(config, kafka_bootstrap, "predictions", before)
    first = _start_voter(config_file, log)
    try:
        seen = outcomes(config, kafka_bootstrap, set(complete), timeout_s=60, settle_s=0.5)
        assert set(complete) <= set(seen), log.read_text()
        assert not set(partial) & set(seen)  # still pending when the voter dies
    finally:
        _kill9(first)
    after = [prediction(rid, "s3", 1) for rid in partial]
    after += [prediction(rid, s, 2) for rid in later for s in ("s1", "s2", "s3")]
    send(config, kafka_bootstrap, "predictions", after)
    second = _start_voter(config_file, log)
    try:
        everything = set(complete) | set(partial) | set(later)
        seen = outcomes(config, kafka_bootstrap, everything, timeout_s=90)
    finally:
        second.terminate()
        second.wait(30)
    missing = everything - set(seen)
    assert not missing, f"lost {sorted(missing)[:10]}\n{log.read_text()[-3000:]}"
    for rid in partial:
        # Decided on all three votes: the s1/s2 predictions were re-read from Kafka, not forgotten.
        labels = [Label.FromString(v) for topic, v in seen[rid] if topic == "labels"]
        assert labels and all(len(label.votes) == 3 and label.label == "neutral" for label in labels)




def test_a_duplicate_prediction_after_a_restart_gives_no_second_outcome(
    voter_config: PipelineConfig, kafka_bootstrap: str
) -> None:
    # A record decided (and committed) before the restart gets a late duplicate from a replaying
    # specialist. The restarted voter rebuilds its memory of decided records from the predictions
    # just below its committed offset, so the duplicate is ignored instead of timing out into `hard`.
    send(voter_config, kafka_bootstrap, "predictions", [prediction("d1", s["name"], 0) for s in SPECIALISTS])
    with running(voter_loop(voter_config, kafka_bootstrap)):
        first = outcomes(voter_config, kafka_bootstrap, {"d1"})
    assert [topic for topic, _ in first["d1"]] == ["labels"]
    send(voter_config, kafka_bootstrap, "predictions", [prediction("d1", "s1", 0)])
    send(voter_config, kafka_bootstrap, "predictions", [prediction("d2", s["name"], 2) for s in SPECIALISTS])
    with running(voter_loop(voter_config, kafka_bootstrap)):
        # Longer than join_timeout_s: a wrongly re-opened d1 would have timed out into `hard` by now.
        after = outcomes(voter_config, kafka_bootstrap, {"d1", "d2"}, settle_s=3.0)
    assert [topic for topic, _ in after["d1"]] == ["labels"], after["d1"]
    assert [topic for topic, _ in after["d2"]] == ["labels"]
