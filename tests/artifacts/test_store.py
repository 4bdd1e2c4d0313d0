"""The model store: immutable versions, complete-or-invisible publishes, verified fetches, current pointer,
rollback; on a local folder and on S3 (a local moto server). Plus the manifest's label mapping."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from autoannotator.artifacts import (
    IntegrityError,
    LabelMapError,
    Manifest,
    ModelStoreError,
    VersionNotFound,
    derive_label_map,
    task_index,
    task_probabilities,
)
from autoannotator.artifacts.manifest import file_sha256
from autoannotator.artifacts.store import ModelStore
from prometheus_client import REGISTRY


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(f"file://{tmp_path / 'store'}")


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "artifact-copy"))


def _manifest(model_labels: list[str], label_map: dict[str, str], task_labels: list[str]) -> Manifest:
    return Manifest(model_labels=model_labels, label_map=label_map, task_labels=task_labels, sha256="0" * 64)


# -- publish / versions -------------------------------------------------------------------------


def test_publish_numbers_versions_in_order(store: ModelStore, tiny_artifact: Path) -> None:
    first = store.publish("sent", tiny_artifact)
    second = store.publish("sent", tiny_artifact, parent_version=first.version)
    assert (first.version, second.version) == ("v0001", "v0002")
    assert store.versions("sent") == ["v0001", "v0002"]
    assert store.specialists() == ["sent"]


def test_published_manifest_records_lineage_metrics_and_checksums(store: ModelStore, tiny_artifact: Path) -> None:
    store.publish("sent", tiny_artifact)
    stored = store.publish("sent", tiny_artifact, parent_version="v0001", metrics={"holdout_accuracy": 0.75})
    reread = store.manifest("sent", "v0002")
    assert reread == stored
    assert reread.specialist == "sent" and reread.parent_version == "v0001"
    assert reread.metrics["holdout_accuracy"] == 0.75
    assert reread.sha256 == file_sha256(tiny_artifact / "model.onnx")
    assert reread.has_weights and "weights/config.json" in reread.files
    assert reread.files["model.onnx"] == reread.sha256


def test_publish_of_unknown_parent_is_refused(store: ModelStore, tiny_artifact: Path) -> None:
    with pytest.raises(VersionNotFound):
        store.publish("sent", tiny_artifact, parent_version="v0007")
    assert store.versions("sent") == []


def test_publish_refuses_an_artifact_whose_model_does_not_match_its_manifest(
    store: ModelStore, tiny_artifact: Path, tmp_path: Path
) -> None:
    artifact = _copy(tiny_artifact, tmp_path)
    with open(artifact / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(IntegrityError, match="does not match"):
        store.publish("sent", artifact)
    assert store.versions("sent") == []


def test_version_without_manifest_is_invisible_and_its_number_is_not_reused(
    store: ModelStore, tiny_artifact: Path, tmp_path: Path
) -> None:
    store.publish("sent", tiny_artifact)
    # What a crash between copying files and writing the manifest leaves behind.
    partial = tmp_path / "store" / "sent" / "v0002"
    partial.mkdir()
    shutil.copy(tiny_artifact / "model.onnx", partial / "model.onnx")
    assert store.versions("sent") == ["v0001"]
    assert store.partial_versions("sent") == ["v0002"]
    assert store.publish("sent", tiny_artifact).version == "v0003"
    assert store.clean_partial("sent") == ["v0002"]
    assert not partial.exists()
    assert store.versions("sent") == ["v0001", "v0003"]


def test_crash_mid_publish_leaves_no_visible_version(
    store: ModelStore, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish("sent", tiny_artifact)
    real_put = store.fs.put_file
    calls = {"n": 0}

    def put_then_die(local: str, remote: str, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk went away")
        real_put(local, remote, **kwargs)

    monkeypatch.setattr(store.fs, "put_file", put_then_die)
    with pytest.raises(OSError, match="disk went away"):
        store.publish("sent", tiny_artifact)
    monkeypatch.undo()
    assert store.versions("sent") == ["v0001"]
    assert store.partial_versions("sent") == ["v0002"]


def test_manifest_of_missing_version_raises_version_not_found(store: ModelStore) -> None:
    with pytest.raises(VersionNotFound):
        store.manifest("sent", "v0001")


# -- fetch --------------------------------------------------------------------------------------


def test_fetch_copies_a_verified_version(store: ModelStore, tiny_artifact: Path, tmp_path: Path) -> None:
    store.publish("sent", tiny_artifact)
    local = store.fetch("sent", "v0001", tmp_path / "cache" / "sent-v0001")
    assert file_sha256(local / "model.onnx") == file_sha256(tiny_artifact / "model.onnx")
    assert (local / "tokenizer" / "tokenizer.json").is_file()
    assert (local / "weights" / "config.json").is_file()
    assert Manifest.read(local).version == "v0001"


def test_fetch_without_weights_skips_them(store: ModelStore, tiny_artifact: Path, tmp_path: Path) -> None:
    store.publish("sent", tiny_artifact)
    local = store.fetch("sent", "v0001", tmp_path / "serve", weights=False)
    assert not (local / "weights").exists()
    assert (local / "model.onnx").is_file()
    assert Manifest.read(local).has_weights is False


def test_fetch_of_tampered_model_raises_integrity_error_and_leaves_nothing(
    store: ModelStore, tiny_artifact: Path, tmp_path: Path
) -> None:
    store.publish("sent", tiny_artifact)
    stored_model = tmp_path / "store" / "sent" / "v0001" / "model.onnx"
    data = bytearray(stored_model.read_bytes())
    data[-1] ^= 0xFF
    stored_model.write_bytes(bytes(data))
    dest = tmp_path / "cache" / "sent-v0001"
    before = REGISTRY.get_sample_value("autoannotator_modelstore_integrity_failures_total") or 0.0
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        store.fetch("sent", "v0001", dest)
    assert REGISTRY.get_sample_value("autoannotator_modelstore_integrity_failures_total") == before + 1
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == []


def test_fetch_into_a_folder_holding_the_same_version_reuses_it(
    store: ModelStore, tiny_artifact: Path, tmp_path: Path
) -> None:
    store.publish("sent", tiny_artifact)
    store.publish("sent", tiny_artifact)
    dest = store.fetch("sent", "v0001", tmp_path / "cache")
    assert store.fetch("sent", "v0001", dest) == dest
    with pytest.raises(ModelStoreError, match="does not hold"):
        store.fetch("sent", "v0002", dest)


# -- current / history / rollback ---------------------------------------------------------------


def test_current_is_none_until_set(store: ModelStore, tiny_artifact: Path) -> None:
    store.publish("sent", tiny_artifact)
    assert store.current("sent") is None


def test_set_current_records_history_and_rollback_walks_back(store: ModelStore, tiny_artifact: Path) -> None:
    for _ in range(3):
        store.set_current("sent", store.publish("sent", tiny_artifact).version)
    assert store.current("sent") == "v0003"
    assert store.rollback("sent") == "v0002"
    assert store.rollback("sent") == "v0001"
    assert store.current("sent") == "v0001"
    assert store.history("sent") == ["v0001", "v0002", "v0003", "v0002", "v0001"]
    assert [e["kind"] for e in store.history_entries("sent")][-2:] == ["rollback", "rollback"]


def test_rollback_without_an_earlier_version_is_an_error(store: ModelStore, tiny_artifact: Path) -> None:
    store.set_current("sent", store.publish("sent", tiny_artifact).version)
    with pytest.raises(ModelStoreError, match="no earlier version"):
        store.rollback("sent")
    assert store.current("sent") == "v0001"


def test_set_current_to_a_missing_version_is_refused(store: ModelStore) -> None:
    with pytest.raises(VersionNotFound):
        store.set_current("sent", "v0004")


def test_invalid_specialist_name_is_refused(store: ModelStore) -> None:
    with pytest.raises(ModelStoreError, match="must match"):
        store.versions("../etc")


def test_artifact_uri_round_trips_to_store_name_and_version(store: ModelStore, tiny_artifact: Path) -> None:
    store.publish("sent", tiny_artifact)
    again, name, version = ModelStore.from_artifact_uri(store.artifact_uri("sent", "v0001"))
    assert (name, version) == ("sent", "v0001")
    assert again.manifest(name, version).sha256 == store.manifest("sent", "v0001").sha256


# -- S3 (moto server on loopback) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, object]]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options: dict[str, object] = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "testing",
        "secret": "testing",
    }
    import s3fs

    s3fs.S3FileSystem(**options).mkdir("models")
    yield options
    server.stop()


def test_s3_store_publishes_fetches_and_rolls_back(
    s3_options: dict[str, object], tiny_artifact: Path, tmp_path: Path
) -> None:
    store = ModelStore("s3://models/team-a", s3_options)
    v1 = store.publish("sent", tiny_artifact).version
    store.set_current("sent", v1)
    store.set_current("sent", store.publish("sent", tiny_artifact, parent_version=v1).version)
    # A second store object (another process) sees the same state.
    other = ModelStore("s3://models/team-a", s3_options)
    assert other.versions("sent") == ["v0001", "v0002"]
    assert other.current("sent") == "v0002"
    local = other.fetch("sent", "v0002", tmp_path / "fetched")
    assert file_sha256(local / "model.onnx") == file_sha256(tiny_artifact / "model.onnx")
    assert other.rollback("sent") == "v0001"
    assert store.artifact_uri("sent", "v0001") == "s3://models/team-a/sent/v0001"


def test_s3_version_without_manifest_is_invisible(s3_options: dict[str, object], tiny_artifact: Path) -> None:
    store = ModelStore("s3://models/team-b", s3_options)
    store.fs.pipe_file("models/team-b/sent/v0001/model.onnx", b"half an upload")
    assert store.versions("sent") == []
    assert store.partial_versions("sent") == ["v0001"]
    assert store.publish("sent", tiny_artifact).version == "v0002"


# -- label mapping ------------------------------------------------------------------------------


def test_task_index_maps_model_order_onto_task_order() -> None:
    manifest = _manifest(["POS", "NEG", "NEU"], {"POS": "positive", "NEG": "negative", "NEU": "neutral"},
                         ["negative", "neutral", "positive"])
    assert task_index(manifest) == [2, 0, 1]


def test_task_probabilities_follow_the_task_order_and_merge_many_to_one() -> None:
    manifest = _manifest(["very_bad", "bad", "good"], {"very_bad": "neg", "bad": "neg", "good": "pos"},
                         ["pos", "neg"])
    index = task_index(manifest)
    probs = task_probabilities(np.log(np.array([[0.1, 0.2, 0.7]])), index, 2)
    np.testing.assert_allclose(probs, [[0.7, 0.3]], rtol=1e-6)


def test_task_index_refuses_a_model_label_that_maps_nowhere() -> None:
    manifest = _manifest(["a", "b", "c"], {"a": "x", "b": "y"}, ["x", "y"])
    with pytest.raises(LabelMapError, match=r"mapped nowhere: \['c'\]"):
        task_index(manifest)


def test_task_index_refuses_a_task_label_without_a_source() -> None:
    manifest = _manifest(["a", "b"], {"a": "x", "b": "y"}, ["x", "y", "z"])
    with pytest.raises(LabelMapError, match=r"\['z'\]") as info:
        task_index(manifest)
    assert info.value.unsourced_task == ["z"]


def test_derive_label_map_matches_names_case_insensitively() -> None:
    assert derive_label_map(["NEGATIVE", "Positive"], ["positive", "negative"]) == {
        "NEGATIVE": "negative",
        "Positive": "positive",
    }


def test_derive_label_map_lists_every_unmatched_label() -> None:
    with pytest.raises(LabelMapError) as info:
        derive_label_map(["LABEL_0", "LABEL_1", "positive"], ["negative", "positive"])
    assert info.value.unmatched_model == ["LABEL_0", "LABEL_1"]
    assert info.value.unsourced_task == ["negative"]


def test_manifest_json_round_trips_and_names_a_bad_field(tiny_artifact: Path) -> None:
    manifest = Manifest.read(tiny_artifact)
    assert Manifest.from_json(manifest.to_json()) == manifest
    broken = manifest.to_json().replace('"precision": "fp32"', '"precision": "fp8"')
    with pytest.raises(ModelStoreError, match="'precision'"):
        Manifest.from_json(broken)
