"""``autoannotator train``: k specialists from a labelled file, served as version 1 each, offline."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.store import ModelStore
from autoannotator.config import PipelineConfig, load_config
from autoannotator.trainer.exceptions import TrainerError
from autoannotator.trainer.labelled import LabelledFileError, read_labelled, read_reviewed
from autoannotator.wire import LabelSource, ReviewedSample, TextRecord

from tests.helpers.kafka import send
from tests.helpers.tiny_model import CORPUS

LABELS = ["negative", "neutral", "positive"]


def write_csv(path: Path, rows: list[dict[str, str]], fields: tuple[str, ...] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


def pipeline_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "task": {"name": "tiny", "labels": LABELS},
        "store": {"uri": f"file://{tmp_path / 'store'}"},
        "voter": {"policy": "soft", "tau": 0.9, "quorum": 2},
        "data_dir": str(tmp_path / "data"),
    }))
    return path


def run_cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "autoannotator.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_train_on_a_tiny_labelled_file_builds_k_served_versions_and_calibrates_the_voter(
    tmp_path: Path, tiny_hf_model: Path
) -> None:
    data = write_csv(tmp_path / "labelled.csv", [{"text": t, "label": s} for t, s in CORPUS])
    config_path = pipeline_yaml(tmp_path)
    done = run_cli("train", "--config", str(config_path), "--data", str(data), "--base", str(tiny_hf_model),
                   "--k", "2", "--steps", "6", "--batch-size", "8", "--names", "tiny-a,tiny-b", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "held-out accuracy" in done.stdout
    assert "[" in done.stderr and "6/6" in done.stderr  # the progress bar reached the end

    config = load_config(config_path)
    assert [s.name for s in config.specialists] == ["tiny-a", "tiny-b"]
    assert config.voter.quorum == 2
    store = ModelStore(config.store.uri)
    for name in ("tiny-a", "tiny-b"):
        assert store.versions(name) == ["v0001"] and store.current(name) == "v0001"
        manifest = store.manifest(name, "v0001")
        assert manifest.task_labels == LABELS and manifest.precision == "int8"  # CPU here: int8
        temperature = config.voter.temperatures[name]
        assert isinstance(temperature, dict) and set(temperature) == {"v0001"} and temperature["v0001"] > 0
        # Served: the current version, fetched from the store as a specialist does, labels texts.
        engine = InferenceEngine.from_artifact(store.fetch(name, "v0001", tmp_path / "served" / name), provider="cpu",
                                               task_labels=LABELS)
        probs = engine.predict(["i love this", "the store opens at nine"])
        assert probs.shape == (2, 3)
    # Bootstrap samples and seeds make the two differ.
    assert store.manifest("tiny-a", "v0001").sha256 != store.manifest("tiny-b", "v0001").sha256


def test_train_refuses_a_name_that_already_has_versions(tmp_path: Path, tiny_hf_model: Path,
                                                        tiny_artifact: Path) -> None:
    data = write_csv(tmp_path / "labelled.csv", [{"text": t, "label": s} for t, s in CORPUS])
    config_path = pipeline_yaml(tmp_path)
    ModelStore(f"file://{tmp_path / 'store'}").publish("tiny-a", tiny_artifact)
    done = run_cli("train", "--config", str(config_path), "--data", str(data), "--base", str(tiny_hf_model),
                   "--names", "tiny-a", "--steps", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "tiny-a" in done.stderr and "already has versions" in done.stderr


@pytest.mark.parametrize(
    ("rows", "fields", "expected"),
    [
        ([{"text": "fine", "label": "positive"}, {"text": "meh", "label": "so-so"}], ("text", "label"),
         ":3: label 'so-so' is not one of task.labels"),
        ([{"text": "fine", "label": "positive"}, {"text": "  ", "label": "negative"}], ("text", "label"),
         ":3: empty text"),
        ([{"body": "fine", "label": "positive"}], ("body", "label"), ":1: missing column(s) ['text']"),
    ],
)
def test_a_bad_csv_row_is_an_error_naming_the_row(tmp_path: Path, rows: list[dict[str, str]],
                                                  fields: tuple[str, ...], expected: str) -> None:
    path = write_csv(tmp_path / "bad.csv", rows, fields)
    with pytest.raises(LabelledFileError) as caught:
        read_labelled(path, LABELS)
    assert str(caught.value).startswith(str(path)) and expected in str(caught.value)


def test_a_jsonl_row_without_a_label_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "positive"}) + "\n" + json.dumps({"text": "no label"}) + "\n")
    with pytest.raises(LabelledFileError, match=r"bad\.jsonl:2: missing column 'label'"):
        read_labelled(path, LABELS)


def test_train_command_reports_the_bad_row_and_writes_nothing(tmp_path: Path, tiny_hf_model: Path) -> None:
    data = write_csv(tmp_path / "labelled.csv", [{"text": "great", "label": "positive"},
                                                 {"text": "bad", "label": "NEGATIVE!"}])
    config_path = pipeline_yaml(tmp_path)
    before = config_path.read_text()
    done = run_cli("train", "--config", str(config_path), "--data", str(data), "--base", str(tiny_hf_model),
                   cwd=tmp_path)
    assert done.returncode == 2
    assert f"{data}:3: label 'NEGATIVE!' is not one of task.labels" in done.stderr
    assert config_path.read_text() == before and not (tmp_path / "store").exists()


def reviewed_items(rows: list[tuple[str, str]], prefix: str = "rv", revision: int = 0) -> list[tuple[str, bytes]]:
    """(key, ReviewedSample) pairs as the reviewer writes them."""
    items = []
    for i, (text, label) in enumerate(rows):
        rid = f"{prefix}-{i}"
        sample = ReviewedSample(record_id=rid, record=TextRecord(id=rid, text=text), label=label,
                                source=LabelSource.LABEL_SOURCE_LLM, revision=revision)
        items.append((rid, sample.SerializeToString()))
    return items


def test_train_from_stream_builds_specialists_from_the_first_reviewed_records(
    make_config: Callable[..., PipelineConfig], kafka_bootstrap: str, tmp_path: Path, tiny_hf_model: Path
) -> None:
    config = make_config(store={"uri": f"file://{tmp_path / 'store'}"}, data_dir=str(tmp_path / "data"))
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    # What a cold-started pipeline's reviewer wrote: 30 answers, one corrected later by a person (revision 2).
    send(config, kafka_bootstrap, "reviewed", reviewed_items(list(CORPUS)))
    send(config, kafka_bootstrap, "reviewed", reviewed_items([(CORPUS[0][0], "neutral")], revision=2))
    rows = read_reviewed(config, kafka_bootstrap, 30)
    assert len(rows) == 30 and len({row.text for row in rows}) == 30  # one row per record id
    assert {row.text: row.label for row in rows}[CORPUS[0][0]] == "neutral"  # the correction wins
    with pytest.raises(TrainerError, match=r"--from-stream 31: the reviewed topic has 30 trainable records"):
        read_reviewed(config, kafka_bootstrap, 31)

    done = run_cli("train", "--config", str(config_path), "--from-stream", "30", "--base", str(tiny_hf_model),
                   "--k", "2", "--steps", "4", "--batch-size", "8", cwd=tmp_path,
                   env={"AUTOANNOTATOR_KAFKA_BOOTSTRAP": kafka_bootstrap})
    assert done.returncode == 0, done.stderr
    assert "30 labelled rows from the first 30 reviewed records" in done.stdout
    store = ModelStore(config.store.uri)
    names = [s.name for s in load_config(config_path).specialists]
    assert len(names) == 2 and all(store.current(name) == "v0001" for name in names)
