"""A cold-started pipeline: task labels and a reviewer, no specialist model anywhere.

The pipeline runs as ``autoannotator up`` runs it (every service a child process, the test
broker, an empty file model store, the mock LLM answering gold labels, a tiny local encoder as
the trainer's base). Its first records are labelled through the reviewer; after the trainer's
first round the specialists serve their first versions and error-bounded routing accepts
consensus labels. No record is lost on the way.
"""

from __future__ import annotations

from pathlib import Path

from autoannotator.stream.reader import TopicReader
from autoannotator.wire import LabelSource, PredictionStatus, decode

from tests.helpers.pipeline import PipelineRun, json_items
from tests.helpers.tiny_model import CORPUS
from tests.helpers.waiting import wait_until

SPECIALISTS = ("s1", "s2")
BETA = 30


def texts(start: int, n: int) -> dict[str, str]:
    """Corpus sentences with a running number, keyed ``c<i>``."""
    return {f"c{i}": f"{CORPUS[i % len(CORPUS)][0]} number {i}" for i in range(start, start + n)}


def gold(n: int) -> dict[str, str]:
    """The corpus label of each text: what the mock LLM answers at accuracy 1."""
    return {f"c{i}": CORPUS[i % len(CORPUS)][1] for i in range(n)}


def read(run: PipelineRun, topic: str) -> list:
    """Every message of a topic so far, decoded."""
    assert run.config is not None
    with TopicReader(run.config.kafka, run.bootstrap, topic) as reader:
        return [decode(topic, m)[0] for m in reader.drain(3)]


def test_a_cold_started_pipeline_labels_through_the_reviewer_then_through_specialists_after_a_round(
        make_config, kafka_bootstrap, tmp_path: Path, tiny_hf_model: Path) -> None:
    run = PipelineRun(
        make_config, kafka_bootstrap, tmp_path, artifacts={}, gold=gold(400), trainer=True,
        sections={
            "specialists": [{"name": n, "threads": 1, "max_wait_ms": 5} for n in SPECIALISTS],
            # Lenient error bound so that a handful of audited records certifies a threshold in a test.
            "voter": {"policy": "error-bounded", "target_error": 0.4, "bound_confidence": 0.5,
                      "min_audit_samples": 5, "audit_window": 50, "audit_rate": 0.0, "quorum": 2},
            "trainer": {"beta": BETA, "batch_size": 8, "holdout_fraction": 0.3, "max_steps": 4,
                        "cold_start": {"base": str(tiny_hf_model), "steps": 12, "learning_rate": 3e-3}},
        },
    )
    with run:
        assert all(run.store.versions(n) == [] for n in SPECIALISTS)
        watcher = run.watcher()
        try:
            first = texts(0, BETA)
            run.send(json_items(first))
            watcher.wait_for(first, 120)
            labels = {label.record_id: label for label in read(run, "labels")}
            assert {rid: LabelSource.Name(labels[rid].source) for rid in first} == dict.fromkeys(
                first, "LABEL_SOURCE_LLM")
            hard = {h.record_id: h for h in read(run, "hard")}
            assert {(hard[rid].reason, hard[rid].audit) for rid in first} == {("cold_start", True)}
            assert all(p.status == PredictionStatus.PREDICTION_STATUS_NO_MODEL
                       for rid in first for p in hard[rid].predictions)

            # BETA reviewed records: the trainer's first round builds, publishes and releases v0001 of each.
            wait_until(lambda: all(run.store.current(n) == "v0001" for n in SPECIALISTS), 240,
                       "the first versions", step_s=1.0)
            sent, start = dict(first), BETA

            def consensus() -> list:
                return [label for label in read(run, "labels") if label.source == LabelSource.LABEL_SOURCE_CONSENSUS]

            while not consensus() and start < 400:
                batch = texts(start, 10)
                run.send(json_items(batch))
                watcher.wait_for(batch, 120)
                sent.update(batch)
                start += 10
            accepted = consensus()
            assert accepted, f"no consensus label after {start - BETA} records past the cold start"
            # Specialists' versions voted (the store may be ahead of a specialist still loading its
            # first version: that one answers NO_MODEL and, under error-bounded routing, does not count).
            assert set(accepted[0].model_versions) and set(accepted[0].model_versions) <= set(SPECIALISTS)
            assert all(label.record_id not in first for label in accepted)
        finally:
            watcher.close()
        report = run.audit()
        assert report.lost == [] and report.conflicting == [] and report.unexpected == []
        assert report.inputs == len(sent) and report.labelled == len(sent)
