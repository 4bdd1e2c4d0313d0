"""The one pipeline harness streaming steadily, and the demo's error-bound summary.

Real embedded broker, tiny ONNX specialists served by the specialist services, the voter with
error-bounded routing (the default policy), the reviewer calling mock-llm over HTTP (a child
process): the same path ``make demo``, ``bench/continual.py`` and ``bench/routing.py`` take.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import VoterConfig
from autoannotator.demo.datasets import Example
from autoannotator.demo.harness import ReviewerSetting, Stage, pipeline_config, pipeline_run
from autoannotator.demo.report import error_bound
from autoannotator.demo.run import default_policy
from autoannotator.demo.stream import stream_steadily
from autoannotator.demo.tracker import RecordOutcome
from autoannotator.stream.kafka import make_producer

from tests.helpers.tiny_model import CORPUS

LABELS = ["negative", "neutral", "positive"]


def test_the_demo_routes_with_the_voters_default_policy_error_bounded() -> None:
    assert default_policy() == VoterConfig().policy == "error-bounded"


def test_the_error_bound_line_puts_target_reported_bound_and_measured_error_side_by_side() -> None:
    metrics = {"autoannotator_voter_error_upper_bound": 0.041, "autoannotator_voter_threshold": 0.93,
               "autoannotator_voter_audit_window": 412.0, "autoannotator_voter_target_error": 0.05}
    outcomes = {
        "a": RecordOutcome("positive", "consensus", 0.99),
        "b": RecordOutcome("negative", "consensus", 0.97),  # wrong against gold
        "c": RecordOutcome("neutral", "consensus", 0.95),
        "d": RecordOutcome("neutral", "llm", 0.0),  # reviewed: not an accepted label
    }
    gold = {"a": "positive", "b": "positive", "c": "neutral", "d": "negative"}
    bound = error_bound(metrics, 0.05, outcomes, gold)
    assert (bound.accepted, bound.accepted_wrong) == (3, 1)
    assert bound.measured_error == pytest.approx(1 / 3)
    assert (bound.upper_bound, bound.threshold, bound.audit_window) == (0.041, 0.93, 412)
    assert bound.line() == ("error-bounded routing: target error 5.0%; current upper bound 4.1% (threshold 0.93, "
                            "412 audit outcomes in the window); measured error of the 3 labels accepted without "
                            "review, against gold: 33.3% (1 wrong)")


def test_a_steady_stream_through_pipeline_run_is_decided_and_the_voter_reports_its_bound(
        tiny_artifact: Path, kafka_bootstrap: str, tmp_path: Path) -> None:
    store = ModelStore(f"file://{tmp_path / 'store'}")
    for name in ("s1", "s2"):
        store.set_current(name, store.publish(name, tiny_artifact).version)
    stream = [Example(f"t{i:03d}", text, label, "tiny") for i, (text, label) in enumerate(CORPUS[:16])]
    gold = {e.id: e.label for e in stream}
    stage = Stage("tiny", {"name": "tiny", "description": "Sentiment of short sentences.", "labels": LABELS},
                  ["s1", "s2"], store.uri, stream, tmp_path, kafka_bootstrap, max_length=32, latency_ms=0.0,
                  batch_size=4, concurrency=2, timeout_s=240, progress=False)
    voter = {"policy": default_policy(), "target_error": 0.1, "audit_rate": 0.1, "min_audit_samples": 5}
    run_dir = tmp_path / "run"
    with pipeline_run(lambda url: pipeline_config(stage, voter, url, run_dir), stream, run_dir, labels=LABELS,
                      reviewer=ReviewerSetting(1.0), latency_ms=0.0, timeout_s=240) as run:
        assert run.simulated and (run_dir / "pipeline.yaml").is_file() and (run_dir / "gold.csv").is_file()
        producer = make_producer(run.config.kafka, run.supervisor.bootstrap)
        result = stream_steadily(producer, run.config.kafka.topic("texts"), stream, run.tracker, rate=50.0,
                                 timeout_s=120, check=run.supervisor.check)
        assert result.order == [e.id for e in stream] and result.paused_s == 0.0
        assert run.tracker.decided(set(gold)) == len(stream)
        bound = error_bound(run.metrics("voter"), run.config.voter.target_error, run.tracker.outcomes, gold)
        reviewed = sum(o.source == "llm" for o in run.tracker.outcomes.values())
        assert run.llm_calls() > 0 and reviewed > 0
    assert bound.target_error == 0.1
    # 16 audit outcomes cannot certify a 10 % bound (with no error the exact bound is still ~17 %): the
    # voter reports the conservative end and accepts nothing.
    assert bound.upper_bound == 1.0 and bound.accepted == 0
    assert bound.line().endswith("no label accepted without review (no threshold certified: every record went to "
                                 "review)")
    assert reviewed == len(stream)
