"""The whole pipeline as `autoannotator up` runs it: specialists, voter and reviewer as processes.

Real broker, real (tiny) ONNX specialists from a file model store, a real OpenAI-compatible
test server as the LLM. Every input id must end in exactly one label or one rejection.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from autoannotator.artifacts.store import ModelStore
from autoannotator.mockllm.server import Gold, MockLLM
from autoannotator.tools.audit import audit_topics
from autoannotator.wire import Label, Rejection

from tests.helpers.kafka import collect, send

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    f"ok{i}": text
    for i, text in enumerate([
        "I love this, it is wonderful", "terrible service, I hate it", "the flight leaves at noon",
        "great job, thanks a lot", "awful, worst day ever", "it is a plane", "happy and delighted",
        "sad and angry about the delay", "the gate changed to B12", "fantastic crew, loved it",
        "disgusting food and rude staff", "a tweet about nothing", "best trip ever", "never again, horrible",
        "the weather is cloudy",
    ])
}
GOLD = {rid: ("positive" if i % 3 == 0 else "negative" if i % 3 == 1 else "neutral")
        for i, rid in enumerate(GOOD)}
BAD = {
    "bad-undecodable": b"\xff\xfe not utf-8 \x80",
    "bad-empty": json.dumps({"text": ""}).encode(),
    "bad-blank": json.dumps({"text": " \n\t "}).encode(),
    "bad-large": json.dumps({"text": "x" * 5000}).encode(),
    "bad-schema": json.dumps({"body": "no text field"}).encode(),
    "bad-tombstone": None,  # a null value: nothing to label, rejected as empty
}
EXPECTED_REASONS = {"bad-undecodable": "undecodable", "bad-empty": "empty", "bad-blank": "empty",
                    "bad-large": "too_large", "bad-schema": "bad_schema", "bad-tombstone": "empty"}


def test_up_runs_the_pipeline_and_every_record_ends_once(make_config, kafka_bootstrap, tmp_path, tiny_artifact,
                                                        second_artifact):
    store = ModelStore(f"file://{tmp_path / 'store'}")
    for name, artifact in (("s1", tiny_artifact), ("s2", tiny_artifact), ("s3", second_artifact)):
        store.set_current(name, store.publish(name, artifact).version)
    gold = Gold()
    for rid, label in GOLD.items():
        gold.add(label, record_id=rid)
    mock = MockLLM(gold, labels=["negative", "neutral", "positive"])
    url = mock.start_in_thread()
    config = make_config(
        input={"format": "json", "max_text_bytes": 1000},
        store={"uri": store.uri},
        specialists=[{"name": n, "threads": 1} for n in ("s1", "s2", "s3")],
        # Only unanimous votes are accepted: whatever the specialists disagree on goes to the LLM.
        voter={"policy": "vote", "eps": 0.3, "join_timeout_s": 20},
        reviewer={"llm": {"base_url": url, "batch_size": 4, "concurrency": 2},
                  "cache_path": str(tmp_path / "cache.sqlite")},
        trainer={"enabled": False},
        data_dir=str(tmp_path / "data"),
    )
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    up = subprocess.Popen(
        [sys.executable, "-m", "autoannotator.cli", "up", "--config", str(cfg), "--metrics-base-port", "0"],
        cwd=REPO, env={**os.environ, "AUTOANNOTATOR_LOG": "WARNING"},
    )
    try:
        send(config, kafka_bootstrap, "texts",
             [(rid, json.dumps({"id": rid, "text": text}).encode()) for rid, text in GOOD.items()]
             + list(BAD.items()))
        labels = collect(config, kafka_bootstrap, "labels", len(GOOD), timeout_s=150)
        rejected = collect(config, kafka_bootstrap, "rejected", len(BAD), timeout_s=30)
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
        mock.stop_thread()
    assert code == 0, "up did not stop cleanly on Ctrl-C"

    report = audit_topics(config, kafka_bootstrap, timeout_s=10)
    assert report.lost == [] and report.lost_messages == [] and report.conflicting == []
    assert report.inputs == len(GOOD) + len(BAD)

    reasons = {m.record_id: Rejection.FromString(m.value).reason for m in rejected}
    assert reasons == EXPECTED_REASONS
    by_id = {m.record_id: Label.FromString(m.value) for m in labels}
    assert set(by_id) == set(GOOD)
    for rid, label in by_id.items():
        assert label.label in ("negative", "neutral", "positive")
        if label.source == Label.DESCRIPTOR.fields_by_name["source"].enum_type.values_by_name[
                "LABEL_SOURCE_LLM"].number:
            assert label.label == GOLD[rid]  # the reviewer's answer, never a guess
            assert label.cost.prompt_tokens > 0
        else:
            assert set(label.model_versions) == {"s1", "s2", "s3"}
