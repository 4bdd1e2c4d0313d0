"""Inference overlapped with tokenization: same predictions, same order, commits held until produced.

The Specialist processor is driven directly, as the service loop drives it (handle, tick, hold,
close), with a real engine over the tiny model and an outbox that records what would be produced.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.exceptions import InferenceError
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.specialist.pipeline import InferenceJob, InferenceWorker
from autoannotator.specialist.service import Specialist
from autoannotator.wire import Prediction, PredictionStatus, RawMessage

from tests.helpers.tiny_model import corpus_texts

LABELS = ["negative", "neutral", "positive"]
TOPIC = "t.texts"


class RecordingOutbox:
    """Keeps every (topic, key, Prediction) sent, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Prediction]] = []

    def send(self, topic: str, key: str | bytes | None, value: Any) -> None:
        self.sent.append((topic, str(key), value))


class GatedEngine:
    """A real engine whose batches wait for ``gate`` (the accelerator is busy until the test opens it)."""

    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine
        self.gate = threading.Event()

    def infer(self, encodings: Any) -> Any:
        assert self.gate.wait(30), "the test never opened the gate"
        return self._engine.infer(encodings)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def config(overlap: bool, consume_batch: int = 500) -> PipelineConfig:
    """A pipeline with one specialist ``s1`` taking plain-text input in batches of at most 4 records."""
    return parse_config({
        "task": {"name": "t", "description": "t", "labels": LABELS},
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "topic_prefix": "t.", "consume_batch": consume_batch},
        "input": {"format": "text"},
        "voter": {"quorum": 1},
        "specialists": [{"name": "s1", "threads": 1, "max_batch_size": 4, "max_wait_ms": 0, "overlap": overlap}],
    })


def messages(texts: list[str], start: int = 0) -> list[RawMessage]:
    return [RawMessage(TOPIC, 0, start + i, f"r{start + i}".encode(), text.encode(), 0)
            for i, text in enumerate(texts)]


def run(engine: Any, overlap: bool, batches: list[list[RawMessage]]) -> list[tuple[str, str, Prediction]]:
    """Feed consumed batches as the loop does (handle, then tick), then close; what was sent, in order."""
    specialist = Specialist(config(overlap), "s1", engine)
    out = RecordingOutbox()
    for batch in batches:
        specialist.handle(batch, out)  # type: ignore[arg-type]
        specialist.tick(out)  # type: ignore[arg-type]
    specialist.close(out)  # type: ignore[arg-type]
    return out.sent


@pytest.fixture(scope="module")
def engine(tiny_artifact: Path) -> InferenceEngine:
    return InferenceEngine.from_artifact(tiny_artifact, provider="cpu", threads=1)


def test_overlap_gives_the_same_predictions_in_the_same_order(engine: InferenceEngine) -> None:
    texts = corpus_texts() * 3
    consumed = [messages(texts[i:i + 20], start=i) for i in range(0, len(texts), 20)]
    plain = run(engine, overlap=False, batches=consumed)
    overlapped = run(engine, overlap=True, batches=consumed)
    assert len(plain) == len(texts)
    assert [key for _, key, _ in overlapped] == [key for _, key, _ in plain]
    for (_, key, a), (_, _, b) in zip(plain, overlapped, strict=True):
        assert a.status == b.status == PredictionStatus.PREDICTION_STATUS_OK, key
        assert list(a.probs) == list(b.probs), key
        assert (a.source_offset, a.model_version) == (b.source_offset, b.model_version)


def test_records_in_flight_hold_back_their_partition_commit(engine: InferenceEngine) -> None:
    gated = GatedEngine(engine)
    texts = corpus_texts()[:8]
    specialist = Specialist(config(overlap=True, consume_batch=8), "s1", gated)  # type: ignore[arg-type]
    out = RecordingOutbox()
    specialist.handle(messages(texts, start=100), out)  # a full consume: the loop moves on at once
    specialist.tick(out)  # type: ignore[arg-type]
    assert out.sent == []  # nothing produced yet ...
    assert specialist.hold(TOPIC, 0) == 100  # ... so nothing may be committed
    gated.gate.set()
    specialist.close(out)  # type: ignore[arg-type]
    assert [key for _, key, _ in out.sent] and sorted(p.source_offset for _, _, p in out.sent) == list(range(100, 108))
    assert specialist.hold(TOPIC, 0) is None


def test_a_drained_topic_waits_for_its_batches_so_idle_streams_gain_no_latency(engine: InferenceEngine) -> None:
    specialist = Specialist(config(overlap=True, consume_batch=500), "s1", engine)
    out = RecordingOutbox()
    specialist.handle(messages(corpus_texts()[:5]), out)  # type: ignore[arg-type]
    assert len(out.sent) == 5 and specialist.hold(TOPIC, 0) is None
    specialist.close(out)  # type: ignore[arg-type]


def test_a_failed_batch_still_gets_error_predictions_in_order(engine: InferenceEngine) -> None:
    class Failing(GatedEngine):
        def infer(self, encodings: Any) -> Any:
            raise InferenceError("ONNX Runtime failed on a batch")

    failing = Failing(engine)
    sent = run(failing, overlap=True, batches=[messages(corpus_texts()[:6])])
    assert [p.status for _, _, p in sent] == [PredictionStatus.PREDICTION_STATUS_ERROR] * 6
    assert all("ONNX Runtime failed" in p.reason for _, _, p in sent)


def test_the_worker_returns_jobs_in_submission_order_and_bounds_its_queue(engine: InferenceEngine) -> None:
    gated = GatedEngine(engine)
    worker: InferenceWorker[int] = InferenceWorker("w", depth=1)
    encodings = engine.tokenize(corpus_texts()[:2])
    jobs = [InferenceJob(gated, [i], encodings) for i in range(2)]  # type: ignore[arg-type]
    worker.submit(jobs[0])  # taken by the thread, which waits at the gate
    worker.submit(jobs[1])  # waits in the queue (depth 1)
    third = threading.Thread(target=worker.submit, args=(InferenceJob(gated, [2], encodings),))  # type: ignore[arg-type]
    third.start()
    third.join(0.5)
    assert third.is_alive()  # the queue is full: submitting blocks (back-pressure)
    assert worker.in_flight() == [0, 1, 2] and worker.finished() == []
    gated.gate.set()
    third.join(10)
    done = worker.finished(wait=True)
    assert [job.items for job in done] == [[0], [1], [2]] and all(job.probs is not None for job in done)
    worker.stop()
