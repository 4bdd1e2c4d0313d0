"""Cold start: no model in the store; specialists answer NO_MODEL until the trainer's first round.

Real components: the broker, the model store, a tiny Hugging Face encoder as the base, the
trainer service (pool, round, export, gate, publish, release), the specialist and its follower.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader
from autoannotator.trainer.coldstart import FirstVersion, majority_accuracy
from autoannotator.trainer.service import SERVICE, build_trainer
from autoannotator.wire import (
    ModelRelease,
    PredictionStatus,
    ReviewedSample,
    decode,
    text_sha256,
)

from tests.helpers.kafka import running, send, send_texts
from tests.helpers.waiting import wait_until
from tests.trainer.test_service import reviewed

NO_MODEL = PredictionStatus.PREDICTION_STATUS_NO_MODEL
OK = PredictionStatus.PREDICTION_STATUS_OK


def cold_config(make_config: Callable[..., PipelineConfig], tmp_path: Path, base: Path,
                names: tuple[str, ...] = ("s1", "s2")) -> PipelineConfig:
    """Specialists with nothing in the store; a first version from ``base`` after 30 reviewed records."""
    return make_config(
        specialists=[{"name": n, "threads": 1, "max_wait_ms": 5} for n in names], voter={"quorum": 1},
        store={"uri": f"file://{tmp_path / 'store'}"}, data_dir=str(tmp_path / "data"),
        trainer={"beta": 30, "batch_size": 8, "holdout_fraction": 0.3, "margin": 0.0,
                 "pool_path": str(tmp_path / "pool.sqlite"),
                 "cold_start": {"base": str(base), "steps": 12, "learning_rate": 3e-3}},
    )


def predictions(config: PipelineConfig, bootstrap: str) -> dict[str, Any]:
    """Every prediction so far, by record id (the last one per id)."""
    with TopicReader(config.kafka, bootstrap, "predictions") as reader:
        return {rid: pred for pred, rid in (decode("predictions", m) for m in reader.drain(5))}


def test_a_cold_specialist_answers_no_model_until_the_first_round_releases_a_version_it_then_serves(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_hf_model: Path, tmp_path: Path
) -> None:
    config = cold_config(make_config, tmp_path, tiny_hf_model, names=("s1",))
    store = ModelStore(config.store.uri)
    assert store.versions("s1") == []
    follower = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).start()
    assert follower.load_current_or_none() is None
    specialist = Specialist(config, "s1", None, follower=follower)
    trainer = build_trainer(config, kafka_bootstrap)
    try:
        with running(ServiceLoop(config, "specialist-s1", specialist, bootstrap=kafka_bootstrap,
                                 group_id=group_id("s1"))), \
                running(ServiceLoop(config, SERVICE, trainer, bootstrap=kafka_bootstrap)):
            sent = {"cold-1": "i love this", "cold-2": "the store opens at nine"}
            send_texts(config, kafka_bootstrap, sent)
            wait_until(lambda: {"cold-1", "cold-2"} <= set(predictions(config, kafka_bootstrap)), 30,
                       "predictions of the cold specialist")
            cold = predictions(config, kafka_bootstrap)
            for rid in ("cold-1", "cold-2"):
                assert (cold[rid].status, cold[rid].reason, cold[rid].model_version) == (NO_MODEL, "no_model", "")
                # The record travels on (lean: its text's hash and where it lies on texts); nothing guessed.
                assert cold[rid].text_sha256 == text_sha256(sent[rid]) and not cold[rid].probs
                assert cold[rid].source_topic == config.kafka.topic("texts")
            send(config, kafka_bootstrap, "reviewed", reviewed(30))
            wait_until(lambda: store.current("s1") == "v0001", 180, "the first version of s1", step_s=0.5)

            def served() -> bool:
                send_texts(config, kafka_bootstrap, {f"warm-{time.monotonic_ns()}": "the flight was on time"})
                return any(p.status == OK and p.model_version == "v0001"
                           for p in predictions(config, kafka_bootstrap).values())

            wait_until(served, 60, "a prediction by v0001", step_s=0.5)
    finally:
        follower.stop()
    with TopicReader(config.kafka, kafka_bootstrap, "model-releases") as reader:
        [release] = [ModelRelease.FromString(m.value) for m in reader.drain(10)]
    assert (release.specialist, release.version, release.parent_version) == ("s1", "v0001", "")
    [round_] = trainer.pool.rounds("s1")
    assert round_.status == "promoted" and round_.upto_seq == 30 and round_.parent_version is None
    manifest = store.manifest("s1", "v0001")
    assert manifest.task_labels == config.task.labels and manifest.source.startswith("cold start:")
    assert manifest.metrics["candidate_accuracy"] >= manifest.metrics["majority_baseline_accuracy"]


def test_k_first_versions_differ_by_bootstrap_sample_and_seed(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_hf_model: Path, tmp_path: Path
) -> None:
    config = cold_config(make_config, tmp_path, tiny_hf_model)
    trainer = build_trainer(config, kafka_bootstrap)
    trainer.pool.add([ReviewedSample.FromString(value) for _, value in reviewed(30)])
    assert trainer.runner.owed() == ["s1", "s2"]
    rounds = trainer.run_once()
    assert [(r.specialist, r.status, r.version) for r in rounds] == [("s1", "promoted", "v0001"),
                                                                      ("s2", "promoted", "v0001")]
    store = ModelStore(config.store.uri)
    assert store.manifest("s1", "v0001").sha256 != store.manifest("s2", "v0001").sha256


def test_a_first_version_must_do_at_least_as_well_as_the_most_frequent_label() -> None:
    assert majority_accuracy(["a", "a", "a", "b"]) == 0.75
    worse = FirstVersion(Path("x"), candidate_accuracy=0.70, baseline_accuracy=0.75, margin=0.0, steps=1, last_loss=1.0)
    within_margin = FirstVersion(Path("x"), 0.70, 0.75, 0.05, 1, 1.0)
    assert not worse.promote and within_margin.promote
