"""The ``export`` and ``models add | list | show | promote | rollback`` commands, end to end on a real broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from autoannotator.artifacts.manifest import Manifest, file_sha256
from autoannotator.artifacts.store import ModelStore
from autoannotator.cli import main
from autoannotator.config import PipelineConfig, dump_config
from autoannotator.stream.reader import TopicReader
from autoannotator.wire import ModelRelease


def _config_file(config: PipelineConfig, tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(dump_config(config))
    return path


@pytest.fixture
def pipeline(make_config: Callable[..., PipelineConfig], tmp_path: Path) -> tuple[PipelineConfig, Path]:
    config = make_config(store={"uri": f"file://{tmp_path / 'store'}"}, specialists=[{"name": "sent"}],
                         voter={"quorum": 1})
    return config, _config_file(config, tmp_path)


def _releases(config: PipelineConfig, count: int) -> list[ModelRelease]:
    with TopicReader(config.kafka, config.bootstrap_servers() or "", "model-releases") as reader:
        messages = reader.read_until(count, timeout_s=20)
    releases = []
    for msg in messages:
        release = ModelRelease()
        release.ParseFromString(msg.value or b"")
        assert msg.key == release.specialist.encode()
        releases.append(release)
    return releases


def _add(cfg: Path, artifact: Path) -> int:
    return main(["models", "add", "--config", str(cfg), "--name", "sent", str(artifact)])


def test_models_add_publishes_the_next_version_and_makes_it_current(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, tmp_path: Path
) -> None:
    _, cfg = pipeline
    assert _add(cfg, tiny_artifact) == 0
    assert _add(cfg, tiny_artifact) == 0
    store = ModelStore(f"file://{tmp_path / 'store'}")
    assert store.versions("sent") == ["v0001", "v0002"]
    assert store.current("sent") == "v0002"
    assert store.manifest("sent", "v0002").parent_version == "v0001"
    assert store.manifest("sent", "v0001").has_weights


def test_models_add_refuses_an_artifact_that_does_not_fit_the_task_labels(
    make_config: Callable[..., PipelineConfig], tiny_artifact: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(create=False, store={"uri": f"file://{tmp_path / 'store'}"},
                         task={"labels": ["spam", "ham"]})
    assert _add(_config_file(config, tmp_path), tiny_artifact) == 2
    assert "label_map" in capsys.readouterr().err
    assert ModelStore(f"file://{tmp_path / 'store'}").versions("sent") == []


def test_models_list_marks_the_current_version(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = pipeline
    _add(cfg, tiny_artifact)
    _add(cfg, tiny_artifact)
    capsys.readouterr()
    assert main(["models", "list", "--config", str(cfg)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [("sent", "v0001"), ("sent", "v0002")]
    assert rows[1][2] == "*" and rows[0][2] != "*"


def test_models_show_prints_the_manifest_and_history(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, cfg = pipeline
    _add(cfg, tiny_artifact)
    capsys.readouterr()
    assert main(["models", "show", "--config", str(cfg), "--name", "sent"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["manifest"]["version"] == "v0001"
    assert doc["manifest"]["sha256"] == file_sha256(tiny_artifact / "model.onnx")
    assert [e["version"] for e in doc["history"]] == ["v0001"]


def test_models_promote_sets_current_and_announces_a_release(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, tmp_path: Path
) -> None:
    config, cfg = pipeline
    _add(cfg, tiny_artifact)
    _add(cfg, tiny_artifact)
    assert main(["models", "promote", "--config", str(cfg), "--name", "sent", "--version", "v0001"]) == 0
    store = ModelStore(f"file://{tmp_path / 'store'}")
    assert store.current("sent") == "v0001"
    [release] = _releases(config, 1)
    assert (release.specialist, release.version, release.kind) == ("sent", "v0001", "release")
    assert release.sha256 == store.manifest("sent", "v0001").sha256
    assert list(release.model_labels) == Manifest.read(tiny_artifact).model_labels
    assert release.artifact_uri == store.artifact_uri("sent", "v0001")


def test_models_rollback_returns_to_the_previous_version_and_announces_it(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, tmp_path: Path
) -> None:
    config, cfg = pipeline
    _add(cfg, tiny_artifact)
    _add(cfg, tiny_artifact)
    assert main(["models", "rollback", "--config", str(cfg), "--name", "sent"]) == 0
    assert ModelStore(f"file://{tmp_path / 'store'}").current("sent") == "v0001"
    [release] = _releases(config, 1)
    assert (release.specialist, release.version, release.kind) == ("sent", "v0001", "rollback")
    assert release.parent_version == ""


def test_models_rollback_without_an_earlier_version_fails_and_announces_nothing(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, cfg = pipeline
    _add(cfg, tiny_artifact)
    assert main(["models", "rollback", "--config", str(cfg), "--name", "sent"]) == 2
    assert "no earlier version" in capsys.readouterr().err
    with TopicReader(config.kafka, config.bootstrap_servers() or "", "model-releases") as reader:
        assert reader.drain(timeout_s=5) == []


def test_models_clean_removes_interrupted_publishes_only(
    pipeline: tuple[PipelineConfig, Path], tiny_artifact: Path, tmp_path: Path
) -> None:
    _, cfg = pipeline
    _add(cfg, tiny_artifact)
    (tmp_path / "store" / "sent" / "v0002").mkdir()
    (tmp_path / "store" / "sent" / "v0002" / "model.onnx").write_bytes(b"half")
    assert main(["models", "clean", "--config", str(cfg), "--name", "sent"]) == 0
    store = ModelStore(f"file://{tmp_path / 'store'}")
    assert store.partial_versions("sent") == [] and store.versions("sent") == ["v0001"]


def test_export_command_prints_the_parity_report(
    tiny_hf_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "art"
    code = main(["export", str(tiny_hf_model), "--out", str(out), "--int8",
                 "--labels", "bad,meh,good", "--label-map", "negative=bad,neutral=meh,positive=good"])
    assert code == 0
    report = capsys.readouterr().out
    assert "int8 probabilities = " in report and "fp32 logits max |onnx - torch|" in report
    manifest = Manifest.read(out)
    assert manifest.task_labels == ["bad", "meh", "good"]
    assert manifest.label_map == {"negative": "bad", "neutral": "meh", "positive": "good"}
    assert manifest.sha256 in report


def test_export_command_names_a_malformed_label_map(
    tiny_hf_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", str(tiny_hf_model), "--out", str(tmp_path / "art"), "--labels", "a,b",
                 "--label-map", "negative"])
    assert code == 2
    assert "--label-map" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()
