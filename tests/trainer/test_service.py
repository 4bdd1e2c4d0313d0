"""The trainer service end to end: reviewed stream -> pool -> round -> store version -> release -> specialist.

Real components: the Kafka-protocol broker, tiny real models, the model store (local and S3
through a moto server), the exporter, the specialist's ONNX engine and its release follower.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, dump_config, load_config
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.broker import free_port
from autoannotator.stream.loop import ServiceLoop
from autoannotator.stream.reader import TopicReader
from autoannotator.trainer.service import SERVICE, build_trainer
from autoannotator.wire import LabelSource, ModelRelease, Prediction, ReviewedSample, TextRecord
from prometheus_client import REGISTRY

from tests.helpers.kafka import running, send, send_texts
from tests.helpers.tiny_model import CORPUS
from tests.helpers.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


def reviewed(n: int, prefix: str = "r") -> list[tuple[str, bytes]]:
    """``n`` reviewed samples (keyed by record id) cycling through the tiny corpus with its labels."""
    items = []
    for i in range(n):
        text, label = CORPUS[i % len(CORPUS)]
        rid = f"{prefix}-{i}"
        sample = ReviewedSample(record_id=rid, record=TextRecord(id=rid, text=text), label=label,
                                source=LabelSource.LABEL_SOURCE_LLM, reviewer="test")
        items.append((rid, sample.SerializeToString()))
    return items


def seeded_store(uri: str, artifact: Path, options: dict[str, Any] | None = None) -> ModelStore:
    """A store whose specialist s1 serves the tiny artifact as its current version v0001."""
    store = ModelStore(uri, options)
    store.set_current("s1", store.publish("s1", artifact).version)
    return store


def trainer_config(make_config: Callable[..., PipelineConfig], tmp_path: Path, store_uri: str,
                   store_options: dict[str, Any] | None = None, **trainer: Any) -> PipelineConfig:
    """A pipeline config with one specialist and a trainer that trains a few steps per round."""
    settings = {"beta": 30, "batch_size": 8, "max_steps": 4, "holdout_fraction": 0.3, "margin": 1.0,
                "pool_path": str(tmp_path / "pool.sqlite"), **trainer}
    return make_config(specialists=[{"name": "s1"}], voter={"quorum": 1},
                       store={"uri": store_uri, "options": store_options or {}},
                       trainer=settings, data_dir=str(tmp_path / "data"))


def releases(config: PipelineConfig, bootstrap: str) -> list[ModelRelease]:
    """Everything on model-releases so far."""
    with TopicReader(config.kafka, bootstrap, "model-releases") as reader:
        return [ModelRelease.FromString(m.value) for m in reader.drain(10)]


def rounds_metric(result: str) -> float:
    """Current value of the trainer's rounds counter for specialist s1."""
    value = REGISTRY.get_sample_value("autoannotator_trainer_rounds_total", {"specialist": "s1", "result": result})
    return value or 0.0


def test_beta_reviewed_samples_release_a_new_version_that_a_running_specialist_serves(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = trainer_config(make_config, tmp_path, f"file://{tmp_path}/store")
    follower = ReleaseFollower(config, "s1", store, bootstrap=kafka_bootstrap).start()
    specialist = ServiceLoop(config, "specialist-s1", Specialist(config, "s1", follower.load_current(),
                             follower=follower), bootstrap=kafka_bootstrap, group_id=group_id("s1"))
    trainer = build_trainer(config, kafka_bootstrap)
    loop = ServiceLoop(config, SERVICE, trainer, bootstrap=kafka_bootstrap)
    try:
        with running(specialist), running(loop):
            send(config, kafka_bootstrap, "reviewed", reviewed(29))
            time.sleep(3)
            assert store.versions("s1") == ["v0001"]  # beta not reached yet
            send(config, kafka_bootstrap, "reviewed", reviewed(1, prefix="last"))
            wait_until(lambda: store.current("s1") == "v0002", 120, "the trainer to promote v0002", step_s=0.5)

            def newest_version_served() -> bool:
                send_texts(config, kafka_bootstrap, {f"t{time.monotonic_ns()}": "the flight was on time"})
                with TopicReader(config.kafka, kafka_bootstrap, "predictions") as reader:
                    return any(Prediction.FromString(m.value).model_version == "v0002" for m in reader.drain(5))

            wait_until(newest_version_served, 60, "a prediction by v0002", step_s=0.5)
    finally:
        follower.stop()
    [release] = releases(config, kafka_bootstrap)
    assert (release.specialist, release.version, release.parent_version, release.kind) == ("s1", "v0002", "v0001",
                                                                                          "release")
    assert release.sha256 == store.manifest("s1", "v0002").sha256
    [round_] = trainer.pool.rounds("s1")
    assert round_.status == "promoted" and round_.version == "v0002" and round_.upto_seq == 30
    pool_size = sum(REGISTRY.get_sample_value("autoannotator_trainer_pool_size", {"split": s}) for s in
                    ("train", "holdout"))
    assert pool_size == 30
    assert REGISTRY.get_sample_value("autoannotator_trainer_promoted_version_info",
                                     {"specialist": "s1", "version": "v0002"}) == 1
    assert round_.n_new + round_.n_holdout == 30 and round_.n_holdout > 0
    manifest = store.manifest("s1", "v0002")
    assert manifest.parent_version == "v0001" and manifest.metrics["heldout_samples"] == round_.n_holdout


def test_samples_keep_being_stored_while_a_round_trains_and_a_stopped_round_stays_owed(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = trainer_config(make_config, tmp_path, f"file://{tmp_path}/store", max_steps=100_000, epochs=10_000)
    trainer = build_trainer(config, kafka_bootstrap)
    with running(ServiceLoop(config, SERVICE, trainer, bootstrap=kafka_bootstrap)):
        send(config, kafka_bootstrap, "reviewed", reviewed(30))
        wait_until(lambda: trainer.round_running, 60, "a round to start", step_s=0.5)
        send(config, kafka_bootstrap, "reviewed", reviewed(10, prefix="during"))
        wait_until(lambda: trainer.pool.size() == 40, 30, "samples sent during the round to be stored", step_s=0.5)
        assert trainer.round_running
    [round_] = trainer.pool.rounds("s1")
    assert round_.status == "interrupted" and round_.upto_seq == 30
    assert trainer.pool.owed("s1", beta=30) and store.versions("s1") == ["v0001"]


def test_a_candidate_that_fails_the_gate_releases_nothing(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    # A learning rate this large wrecks the tiny model: the candidate is worse and must not ship.
    config = trainer_config(make_config, tmp_path, f"file://{tmp_path}/store", learning_rate=5.0, max_steps=8,
                            margin=0.0)
    trainer = build_trainer(config, kafka_bootstrap)
    trainer.pool.add([ReviewedSample.FromString(value) for _, value in reviewed(30)])
    rejected_before = rounds_metric("rejected")
    [round_] = trainer.run_once()
    assert round_.status == "rejected", round_.error
    assert rounds_metric("rejected") == rejected_before + 1
    assert round_.candidate_accuracy < round_.current_accuracy
    assert store.versions("s1") == ["v0001"] and store.current("s1") == "v0001"
    assert releases(config, kafka_bootstrap) == []


def test_a_trainer_killed_mid_round_leaves_no_version_and_redoes_the_round_after_restart(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    # Enough steps that the round is still fine-tuning when it is killed.
    config = trainer_config(make_config, tmp_path, f"file://{tmp_path}/store", max_steps=100_000, epochs=10_000)
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(dump_config(config))
    send(config, kafka_bootstrap, "reviewed", reviewed(30))
    env = {**os.environ, "AUTOANNOTATOR_LOG": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "autoannotator.cli", "trainer", "--config", str(config_file)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def round_running() -> bool:
            if not (tmp_path / "pool.sqlite").exists():
                return False
            with sqlite3.connect(tmp_path / "pool.sqlite") as db:
                try:
                    return bool(db.execute("SELECT 1 FROM rounds WHERE status = 'running'").fetchall())
                except sqlite3.OperationalError:
                    return False

        wait_until(round_running, 120, "the trainer subprocess to start a round", step_s=0.5)
        time.sleep(2)  # inside fine-tuning
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert store.versions("s1") == ["v0001"] and store.partial_versions("s1") == []
    # Restart (with a short round): the interrupted round is owed again and redone from the pool.
    config = load_config(config_file)
    config.trainer.max_steps = 4
    trainer = build_trainer(config, kafka_bootstrap)
    assert trainer.pool.size() == 30  # the pool is intact
    with running(ServiceLoop(config, SERVICE, trainer, bootstrap=kafka_bootstrap)):
        wait_until(lambda: store.current("s1") == "v0002", 120, "the redone round to promote v0002", step_s=0.5)
    first, redone = trainer.pool.rounds("s1")
    assert first.status == "interrupted" and redone.status == "promoted"
    assert redone.upto_seq == first.upto_seq == 30
    assert [r.version for r in releases(config, kafka_bootstrap)] == ["v0002"]


@pytest.fixture
def s3_endpoint() -> Any:
    """A local S3-compatible server (moto) with one bucket; yields the fsspec storage options."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, **creds).create_bucket(Bucket="models")
    try:
        yield {"key": "test", "secret": "test", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    finally:
        server.stop()


def test_a_promoted_version_is_published_to_an_s3_store(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path,
    s3_endpoint: dict[str, Any],
) -> None:
    store = seeded_store("s3://models/aa", tiny_artifact, s3_endpoint)
    config = trainer_config(make_config, tmp_path, "s3://models/aa", s3_endpoint)
    trainer = build_trainer(config, kafka_bootstrap)
    trainer.pool.add([ReviewedSample.FromString(value) for _, value in reviewed(30)])
    [round_] = trainer.run_once()
    assert round_.status == "promoted", round_.error
    fresh = ModelStore("s3://models/aa", s3_endpoint)
    assert fresh.versions("s1") == ["v0001", "v0002"] and fresh.current("s1") == "v0002"
    fetched = fresh.fetch("s1", "v0002", tmp_path / "fetched")
    assert (fetched / "model.onnx").is_file() and (fetched / "weights").is_dir()
    [release] = releases(config, kafka_bootstrap)
    assert release.artifact_uri == "s3://models/aa/s1/v0002"
    assert store.manifest("s1", "v0002").parent_version == "v0001"


def test_a_round_that_cannot_run_is_recorded_as_failed_with_its_error(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tmp_path: Path
) -> None:
    # s1 was never published (a cold start), and its first version has no base encoder to come from.
    config = trainer_config(make_config, tmp_path, f"file://{tmp_path}/empty-store",
                            cold_start={"base": str(tmp_path / "no-such-encoder")})
    trainer = build_trainer(config, kafka_bootstrap)
    trainer.pool.add([ReviewedSample.FromString(value) for _, value in reviewed(30)])
    failed_before = rounds_metric("failed")
    [round_] = trainer.run_once()
    assert round_.status == "failed" and "BaseModelMissing" in round_.error
    assert "trainer.cold_start.base" in round_.error and "no-such-encoder" in round_.error
    assert rounds_metric("failed") == failed_before + 1
    assert releases(config, kafka_bootstrap) == []


def test_trainer_once_runs_a_round_over_the_pool_and_prints_the_ledger(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, tmp_path: Path
) -> None:
    store = seeded_store(f"file://{tmp_path}/store", tiny_artifact)
    config = trainer_config(make_config, tmp_path, f"file://{tmp_path}/store", beta=1000)  # beta far away
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(dump_config(config))
    build_trainer(config, kafka_bootstrap).pool.add([ReviewedSample.FromString(v) for _, v in reviewed(30)])
    cli = [sys.executable, "-m", "autoannotator.cli", "trainer", "--config", str(config_file)]
    once = subprocess.run([*cli, "--once"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert once.returncode == 0, once.stderr[-2000:]
    assert json.loads(once.stdout.splitlines()[-1])["status"] == "promoted"
    assert store.current("s1") == "v0002"
    ledger = subprocess.run([*cli, "--rounds"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert [json.loads(line)["version"] for line in ledger.stdout.splitlines()] == ["v0002"]
