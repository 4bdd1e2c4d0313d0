"""Hot reload: a release mid-stream swaps versions between batches; a bad release changes nothing."""

from __future__ import annotations

import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.manifest import Manifest, file_sha256
from autoannotator.artifacts.release import announce, release_for
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig
from autoannotator.specialist.reload import ReleaseFollower
from autoannotator.specialist.service import Specialist, group_id
from autoannotator.stream.loop import ServiceLoop
from autoannotator.wire import Prediction, PredictionStatus

from tests.helpers.kafka import collect, running, send_texts
from tests.helpers.metrics import counter
from tests.helpers.tiny_model import build_tiny_artifact, corpus_texts
from tests.helpers.waiting import wait_until


@pytest.fixture(scope="module")
def next_version_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A different tiny model (another seed, labels in another order) to release as the next version."""
    return build_tiny_artifact(
        tmp_path_factory.mktemp("second") / "artifact",
        model_labels=("POS", "NEG", "NEU"),
        seed=1,
        label_map={"POS": "positive", "NEG": "negative", "NEU": "neutral"},
    )


def make_store(root: Path, name: str, artifact: Path) -> ModelStore:
    """A file store whose current version of ``name`` is ``artifact``."""
    store = ModelStore(f"file://{root}")
    store.set_current(name, store.publish(name, artifact).version)
    return store


def reloads(name: str, result: str) -> float:
    """How many releases of ``name`` ended with ``result`` (the Prometheus counter)."""
    return counter("autoannotator_specialist_reloads_total", specialist=name, result=result)


def read_predictions(config: PipelineConfig, bootstrap: str, count: int) -> dict[str, Prediction]:
    got: dict[str, Prediction] = {}
    for msg in collect(config, bootstrap, "predictions", count, timeout_s=90):
        assert msg.record_id not in got, f"{msg.record_id} labelled twice"
        got[msg.record_id] = Prediction.FromString(msg.value)
    return got


def serve(config: PipelineConfig, name: str, store: ModelStore, bootstrap: str) -> tuple[ServiceLoop, Specialist]:
    """The service as the CLI builds it: follower started first, then the store's current version."""
    follower = ReleaseFollower(config, name, store, bootstrap=bootstrap, poll_s=0.2).start()
    processor = Specialist(config, name, follower.load_current(), follower=follower)
    loop = ServiceLoop(config, f"specialist-{name}", processor, bootstrap=bootstrap, group_id=group_id(name))
    return loop, processor


def test_a_release_mid_stream_switches_versions_without_losing_or_repeating_a_record(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, next_version_artifact: Path,
    tmp_path: Path,
) -> None:
    name = "reload-mid"
    store = make_store(tmp_path / "store", name, tiny_artifact)
    config = make_config(specialists=[{"name": name, "threads": 1, "max_batch_size": 4}], voter={"quorum": 1},
                         store={"uri": store.uri}, data_dir=str(tmp_path / "data"))
    texts = corpus_texts()
    records = {f"m{i}": texts[i % len(texts)] for i in range(90)}
    ids = list(records)
    loop, processor = serve(config, name, store, kafka_bootstrap)

    def produce_slowly() -> None:
        for start in range(6, len(ids), 6):
            send_texts(config, kafka_bootstrap, {rid: records[rid] for rid in ids[start:start + 6]})
            time.sleep(0.15)

    with running(loop):
        send_texts(config, kafka_bootstrap, {rid: records[rid] for rid in ids[:6]})
        read_predictions(config, kafka_bootstrap, 6)  # the group has joined and v0001 serves
        producer = threading.Thread(target=produce_slowly)
        producer.start()
        time.sleep(0.5)
        v2 = store.publish(name, next_version_artifact).version
        store.set_current(name, v2)
        announce(config, kafka_bootstrap, release_for(store, name, v2))
        producer.join()
        got = read_predictions(config, kafka_bootstrap, len(records))
        wait_until(lambda: processor.version == v2, 60, "the new version to serve")

    assert set(got) == set(records)
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for p in got.values():
        assert p.status == PredictionStatus.PREDICTION_STATUS_OK
        by_partition[p.source_partition].append((p.source_offset, p.model_version))
    versions = {p.model_version for p in got.values()}
    assert versions == {"v0001", v2}
    for partition, seq in by_partition.items():
        ordered = [v for _, v in sorted(seq)]
        assert ordered == sorted(ordered), f"partition {partition} went back to the old version: {ordered}"
    # Each prediction is exactly what the version it names computes.
    engines = {
        v: InferenceEngine.from_artifact(store.fetch(name, v, tmp_path / "check" / v), provider="cpu")
        for v in versions
    }
    for rid, p in got.items():
        np.testing.assert_allclose(p.probs, engines[p.model_version].predict([records[rid]])[0], atol=1e-5)


def test_a_corrupt_or_unloadable_release_keeps_the_old_version_serving(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, next_version_artifact: Path,
    tmp_path: Path,
) -> None:
    name = "reload-bad"
    store = make_store(tmp_path / "store", name, tiny_artifact)
    config = make_config(specialists=[{"name": name, "threads": 1}], voter={"quorum": 1},
                         store={"uri": store.uri}, data_dir=str(tmp_path / "data"))
    # v0002: the stored model.onnx is altered after publishing (sha256 no longer matches).
    tampered = store.publish(name, next_version_artifact).version
    (tmp_path / "store" / name / tampered / "model.onnx").write_bytes(b"tampered")
    # v0003: checksums agree, but the file is no ONNX graph.
    broken = Path(shutil.copytree(next_version_artifact, tmp_path / "broken"))
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    manifest = Manifest.read(broken)
    manifest.sha256 = file_sha256(broken / "model.onnx")
    manifest.write(broken)
    unloadable = store.publish(name, broken).version
    before = {r: reloads(name, r) for r in ("integrity_error", "load_error")}
    loop, processor = serve(config, name, store, kafka_bootstrap)

    with running(loop):
        for version in (tampered, unloadable):
            announce(config, kafka_bootstrap, release_for(store, name, version))
        wait_until(lambda: reloads(name, "integrity_error") > before["integrity_error"]
                   and reloads(name, "load_error") > before["load_error"], 60, "both bad releases to be refused")
        send_texts(config, kafka_bootstrap, {f"b{i}": t for i, t in enumerate(corpus_texts()[:6])})
        got = read_predictions(config, kafka_bootstrap, 6)

    assert processor.version == "v0001"
    assert {p.model_version for p in got.values()} == {"v0001"}
    assert all(p.status == PredictionStatus.PREDICTION_STATUS_OK for p in got.values())


def test_releases_of_other_specialists_are_ignored(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, next_version_artifact: Path,
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path / "store", "mine", tiny_artifact)
    make_store(tmp_path / "store", "theirs", tiny_artifact)
    config = make_config(specialists=[{"name": "mine"}], voter={"quorum": 1}, store={"uri": store.uri},
                         data_dir=str(tmp_path / "data"))
    follower = ReleaseFollower(config, "mine", store, bootstrap=kafka_bootstrap, poll_s=0.2).start()
    try:
        follower.load_current()
        theirs = store.publish("theirs", next_version_artifact).version
        mine = store.publish("mine", next_version_artifact).version
        announce(config, kafka_bootstrap, release_for(store, "theirs", theirs))
        announce(config, kafka_bootstrap, release_for(store, "mine", mine))
        engines = []
        wait_until(lambda: bool(engines.append(follower.take()) or engines[-1]), 60, "an engine handed over")
        assert engines[-1].version == mine
        assert all(e is None for e in engines[:-1])
    finally:
        follower.stop()


def test_models_rollback_switches_a_running_specialist_back_to_the_older_version(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tiny_artifact: Path, next_version_artifact: Path,
    tmp_path: Path,
) -> None:
    import yaml
    from autoannotator.cli import main

    name = "reload-back"
    store = make_store(tmp_path / "store", name, tiny_artifact)
    config = make_config(specialists=[{"name": name, "threads": 1}], voter={"quorum": 1},
                         store={"uri": store.uri}, data_dir=str(tmp_path / "data"))
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    v2 = store.publish(name, next_version_artifact).version
    loop, processor = serve(config, name, store, kafka_bootstrap)
    with running(loop):
        assert main(["models", "promote", "--config", str(cfg), "--name", name, "--version", v2]) == 0
        wait_until(lambda: processor.version == v2, 60, "the new version to serve")
        assert main(["models", "rollback", "--config", str(cfg), "--name", name]) == 0
        wait_until(lambda: processor.version == "v0001", 60, "the rollback to serve v0001")
        send_texts(config, kafka_bootstrap, {"after-rollback": "I love it"})
        got = read_predictions(config, kafka_bootstrap, 1)
    assert got["after-rollback"].model_version == "v0001"
    assert store.current(name) == "v0001"
