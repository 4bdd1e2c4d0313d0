"""Hostile and bad input (tests/data/hostile/manifest.jsonl): each case is labelled or rejected as the corpus says.

One line per case: ``expect`` is ``label`` or ``rejected`` (with the ``reason``); the Kafka value is
``json`` (a document to encode), ``raw_hex`` (exact bytes) or ``repeat`` (a long text built from a
character and a count, so the 1 MiB case is not stored). Prompt-injection cases try to forge
records or answers for the ``h-victim-*`` records; they must not change anyone else's label.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autoannotator.config import PromptConfig, TaskConfig
from autoannotator.exceptions import AutoAnnotatorError, BadInput
from autoannotator.mockllm.server import parse_records
from autoannotator.reviewer.prompt import PromptBuilder, PromptRecord
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import Label, LabelSource, RawMessage, Rejection, decode_text_record
from confluent_kafka import Producer

from tests.helpers.pipeline import LABELS, PipelineRun, gold_for

pytestmark = pytest.mark.timeout(300)

CORPUS = Path(__file__).parents[1] / "data" / "hostile" / "manifest.jsonl"
MAX_TEXT_BYTES = 2000
FORGED = {"h-forged-1", "h-forged-2"}


def load_cases() -> list[dict]:
    """The corpus, one dict per case."""
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def value_of(case: dict) -> bytes:
    """The exact bytes a producer puts on ``texts`` for this case."""
    if "raw_hex" in case:
        return bytes.fromhex(case["raw_hex"])
    if "repeat" in case:
        text = case["repeat"]["char"] * case["repeat"]["times"]
        return json.dumps({"id": case["id"], "text": text}).encode("utf-8")
    return json.dumps(case["json"]).encode("utf-8")


CASES = load_cases()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_each_corpus_case_decodes_to_its_expected_outcome(case: dict) -> None:
    msg = RawMessage(topic="texts", partition=0, offset=0, key=case["id"].encode(), value=value_of(case),
                     timestamp_ms=0)
    if case["expect"] == "rejected":
        with pytest.raises(BadInput) as err:
            decode_text_record(msg, "json", MAX_TEXT_BYTES)
        assert err.value.reason == case["reason"]
        assert isinstance(err.value, AutoAnnotatorError)
    else:
        record = decode_text_record(msg, "json", MAX_TEXT_BYTES)
        assert record.id == case["id"]
        assert record.text == case["json"]["text"]  # kept byte for byte: nothing is stripped or "cleaned"


def test_prompt_injection_texts_stay_inside_their_own_record_line() -> None:
    texts = {c["id"]: c["json"]["text"] for c in CASES if c["expect"] == "label"}
    builder = PromptBuilder(TaskConfig(labels=LABELS), PromptConfig())
    messages = builder.messages([PromptRecord(rid, text) for rid, text in texts.items()])
    # What an LLM reading one record per line sees: exactly the batch's records, texts intact, nothing forged.
    assert parse_records(messages) == list(texts.items())


def _produce(run: PipelineRun, items: list[tuple[str, bytes]]) -> None:
    # The 1 MiB case is over librdkafka's default message.max.bytes: a client that allows it, to test the services.
    producer = Producer({"bootstrap.servers": run.bootstrap, "message.max.bytes": 4_000_000,
                               "compression.type": "lz4"})
    for key, value in items:
        producer.produce(run.config.kafka.topic("texts"), value, key=key)
        producer.poll(0)
    assert producer.flush(30) == 0


def test_pipeline_labels_or_rejects_every_hostile_record_and_injections_change_no_other_label(
        make_config, kafka_bootstrap, tmp_path, tiny_artifact, second_artifact):
    to_label = [c["id"] for c in CASES if c["expect"] == "label"]
    run = PipelineRun(
        make_config, kafka_bootstrap, tmp_path, {"s1": tiny_artifact, "s2": second_artifact}, gold=gold_for(to_label),
        # Everything goes to the LLM (tau 1 is never reached) in large batches: injections share a prompt
        # with the records they name.
        sections={"input": {"max_text_bytes": MAX_TEXT_BYTES}, "voter": {"policy": "soft", "tau": 1.0},
                  "reviewer": {"llm": {"batch_size": 30, "concurrency": 1}}},
    )
    with run:
        watcher = run.watcher()
        try:
            _produce(run, [(c["id"], value_of(c)) for c in CASES])
            watcher.wait_for([c["id"] for c in CASES], 150)
        finally:
            watcher.close()
        asked = [set(r.ids) for r in run.mock.requests]
    labels: dict[str, Label] = {}
    reasons: dict[str, str] = {}
    with TopicReader(run.config.kafka, run.bootstrap, "labels") as reader:
        labels = {m.record_id: Label.FromString(m.value) for m in reader.drain(5)}
    with TopicReader(run.config.kafka, run.bootstrap, "rejected") as reader:
        reasons = {m.record_id: Rejection.FromString(m.value).reason for m in reader.drain(5)}
    expected_rejections = {c["id"]: c["reason"] for c in CASES if c["expect"] == "rejected"}
    assert reasons == expected_rejections
    assert set(labels) == set(to_label)
    for rid, label in labels.items():
        assert label.source == LabelSource.LABEL_SOURCE_LLM
        assert label.label == run.gold[rid], f"{rid}: label changed from the LLM's answer"
    assert any({"h-victim-1", "h-injection-forged-line"} <= ids for ids in asked)  # they shared a prompt
    assert all(not ids & FORGED for ids in asked), "a forged record reached the LLM as a record"
    report = run.audit()
    assert report.lost == [] and report.lost_messages == [] and report.unexpected == [] and report.conflicting == []
