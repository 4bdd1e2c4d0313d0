"""The pipeline under LLM faults, an exhausted budget and a corrupt model release.

Every input id ends in a valid label or a rejection with a reason; no label is guessed: with the
mock LLM at accuracy 1, every label whose source is the LLM equals the gold label.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml
from autoannotator.artifacts.manifest import Manifest, file_sha256
from autoannotator.artifacts.release import announce, release_for
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import Label, LabelSource, Rejection

from tests.helpers.pipeline import (
    LABELS,
    PipelineRun,
    gold_for,
    json_items,
    make_texts,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


def read_outcomes(run: PipelineRun) -> tuple[dict[str, list[Label]], dict[str, list[Rejection]]]:
    """Every label and rejection on the run's topics, grouped by record id."""
    labels: dict[str, list[Label]] = {}
    rejected: dict[str, list[Rejection]] = {}
    with TopicReader(run.config.kafka, run.bootstrap, "labels") as reader:
        for msg in reader.drain(5):
            labels.setdefault(msg.record_id, []).append(Label.FromString(msg.value))
    with TopicReader(run.config.kafka, run.bootstrap, "rejected") as reader:
        for msg in reader.drain(5):
            rejected.setdefault(msg.record_id, []).append(Rejection.FromString(msg.value))
    return labels, rejected


def assert_nothing_guessed(run: PipelineRun, ids: set[str]) -> tuple[int, int]:
    """Every id labelled validly (LLM labels equal gold) or rejected with a reason; returns (llm, rejected)."""
    labels, rejected = read_outcomes(run)
    assert set(labels) | set(rejected) >= ids
    assert not set(labels) & set(rejected), "an id was both labelled and rejected"
    llm = 0
    for rid, got in labels.items():
        assert all(label.label in LABELS for label in got)
        assert len({label.label for label in got}) == 1, f"{rid} labelled differently by duplicates"
        if got[0].source == LabelSource.LABEL_SOURCE_LLM:
            llm += 1
            assert got[0].label == run.gold[rid], f"{rid}: the LLM's label is not what the LLM answered"
    for rid, got in rejected.items():
        assert all(r.reason and r.stage for r in got), f"{rid} rejected without a reason"
    report = run.audit()
    assert report.lost == [] and report.conflicting == [] and report.unexpected == []
    return llm, len(rejected)


def test_llm_faults_and_an_endpoint_outage_end_every_record_validly_or_rejected(
        make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact):
    texts = make_texts(60, prefix="f")
    run = PipelineRun(
        make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact}, gold=gold_for(texts),
        mock_options={"fault_rates": {"429": 0.1, "500": 0.1, "timeout": 0.05, "malformed": 0.1, "bad_label": 0.1,
                                      "missing_id": 0.1},
                      "retry_after_s": 0.5, "hang_s": 8.0},
    )
    run.mock_options["seed"] = 3
    with run:
        run.mock.script.extend(["429"] * 10)  # a storm of rate limits with Retry-After first
        watcher = run.watcher()
        try:
            first = dict(list(texts.items())[:30])
            run.send(json_items(first))
            watcher.wait_for(first, 150)
            run.stop_llm()  # the endpoint goes away while hard records keep coming
            run.send(json_items(dict(list(texts.items())[30:])))
            time.sleep(10)
            run.start_llm()
            watcher.wait_for(texts, 150)
        finally:
            watcher.close()
        outcomes = {o for log in run.mock.requests for o in [log.outcome]}
    llm, rejected = assert_nothing_guessed(run, set(texts))
    print(f"LLM faults: {len(texts)} records, {llm} labelled by the LLM, {rejected} rejected, "
          f"mock outcomes {sorted(outcomes)}")
    assert {"429", "500", "malformed", "bad_label", "missing_id"} <= outcomes
    assert llm > 0


def test_budget_exhausted_mid_run_pauses_the_reviewer_and_a_raised_budget_resumes_it(
        make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact):
    texts = make_texts(40, prefix="b")
    price = {"input_per_mtok": 2000.0, "output_per_mtok": 2000.0}
    run = PipelineRun(
        make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact}, gold=gold_for(texts),
        sections={"reviewer": {"llm": {"prices": {"gpt-4o-mini": price, "mock-llm": price}},
                               "budget": {"max_usd_total": 1.0}}},
    )
    with run:
        run.send(json_items(texts))
        wait_until(lambda: "autoannotator_consumer_paused{service=\"reviewer\"} 1.0" in "".join(
            run.metrics_pages().values()), 150, "the reviewer to pause on its budget")
        asked = len(run.mock.requests)
        time.sleep(3)
        assert len(run.mock.requests) == asked, "requests were sent while the budget was exhausted"
        assert "autoannotator_llm_budget_state 2.0" in "".join(run.metrics_pages().values())
        # The operator raises the budget and restarts the reviewer: held records are reviewed, none lost.
        doc = yaml.safe_load(run.supervisor.config_path.read_text())
        doc["reviewer"]["budget"]["max_usd_total"] = 1000.0
        run.supervisor.config_path.write_text(yaml.safe_dump(doc))
        old = run.pid("reviewer")
        run.supervisor.child("reviewer").proc.send_signal(signal.SIGTERM)
        wait_until(lambda: run.pid("reviewer") != old, 60, "the reviewer to restart")
        watcher = run.watcher()
        try:
            watcher.wait_for(texts, 150)
        finally:
            watcher.close()
    llm, _ = assert_nothing_guessed(run, set(texts))
    assert llm > asked  # more was reviewed after the budget was raised


# Slow: the unit part runs by default in tests/specialist/test_reload.py; this keeps the default suite short.
@pytest.mark.slow
def test_a_corrupt_model_release_leaves_the_old_version_labelling_in_the_pipeline(
        make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact):
    before, after = make_texts(10, prefix="pre"), make_texts(20, prefix="post")
    run = PipelineRun(make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact},
                      gold=gold_for({**before, **after}))
    with run:
        watcher = run.watcher()
        try:
            run.send(json_items(before))
            watcher.wait_for(before, 120)
            # v0002: model.onnx altered after publishing (sha256 mismatch); v0003: checksums agree, no ONNX graph.
            tampered = run.store.publish("s1", second_artifact).version
            (tmp_path / "store" / "s1" / tampered / "model.onnx").write_bytes(b"tampered")
            broken = Path(shutil.copytree(second_artifact, tmp_path / "broken"))
            (broken / "model.onnx").write_bytes(b"not an onnx graph")
            manifest = Manifest.read(broken)
            manifest.sha256 = file_sha256(broken / "model.onnx")
            manifest.write(broken)
            unloadable = run.store.publish("s1", broken).version
            for version in (tampered, unloadable):
                announce(run.config, kafka_bootstrap, release_for(run.store, "s1", version))
            wait_until(lambda: all(re.search(rf'autoannotator_specialist_reloads_total{{[^}}]*result="{r}"[^}}]*}} 1',
                                             "".join(run.metrics_pages().values()))
                                   for r in ("integrity_error", "load_error")), 60, "both releases to fail")
            run.send(json_items(after))
            watcher.wait_for(after, 120)
        finally:
            watcher.close()
        assert run.supervisor.child("specialist-s1").restarts == 0  # it did not crash on the bad releases
    labels, rejected = read_outcomes(run)
    assert not rejected
    assert set(labels) == set(before) | set(after)
    assert {label.model_versions["s1"] for rid in after for label in labels[rid]} == {"v0001"}
