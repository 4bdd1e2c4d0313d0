"""Fine-tuning towards the model's own labels, and the ONNX promotion gate (tiny real models)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from autoannotator.config import PipelineConfig, parse_config
from autoannotator.trainer.exceptions import FineTuneError, LabelMappingError
from autoannotator.trainer.finetune import FineTuneSettings, fine_tune, task_to_model_ids
from autoannotator.trainer.gate import evaluate_gate, serving_predictor
from autoannotator.trainer.pool import PoolSample

from tests.helpers.tiny_model import CORPUS, build_tiny_artifact, build_tiny_hf_model

TASK = ["negative", "neutral", "positive"]
# A model whose logits are in another order and whose names differ from the task's.
MODEL_LABELS = ("POS", "NEG", "NEU")
LABEL_MAP = {"POS": "positive", "NEG": "negative", "NEU": "neutral"}
FAST = FineTuneSettings(learning_rate=3e-3, weight_decay=0.01, epochs=20, batch_size=16, max_steps=20, seed=0)


def gate_config() -> PipelineConfig:
    """A pipeline whose specialist ``s1`` serves on the CPU with the manifest's own label map."""
    return parse_config({"task": {"name": "t", "description": "d", "labels": TASK},
                         "specialists": [{"name": "s1", "provider": "cpu"}], "voter": {"quorum": 1}})


def corpus_samples() -> list[PoolSample]:
    return [PoolSample(i, f"c{i}", text, label) for i, (text, label) in enumerate(CORPUS)]


def test_task_labels_map_to_the_models_own_label_ids() -> None:
    assert task_to_model_ids(list(MODEL_LABELS), LABEL_MAP, TASK) == {"negative": 1, "neutral": 2, "positive": 0}


def test_a_task_label_without_a_model_label_is_refused_by_name() -> None:
    with pytest.raises(LabelMappingError, match="'neutral'"):
        task_to_model_ids(["POS", "NEG"], {"POS": "positive", "NEG": "negative"}, TASK)


def test_fine_tuning_trains_towards_the_models_own_label_for_a_reviewed_label(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    # Every reviewed label is "neutral" (task index 1); the model's own "NEU" is logit 2, its logit 1 is "NEG".
    untrained = build_tiny_hf_model(tmp_path / "base", MODEL_LABELS, seed=1, train_steps=0)
    texts = [t for t, _ in CORPUS]
    report = fine_tune(untrained, tmp_path / "tuned", texts, ["neutral"] * len(texts), task_labels=TASK,
                       label_map=LABEL_MAP, settings=FAST)
    assert report.steps == 20 and report.last_loss < report.first_loss
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "tuned")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tuned")
    with torch.no_grad():
        ids = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    assert {model.config.id2label[i] for i in ids} == {"NEU"}


def test_fine_tuning_a_missing_model_raises_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(FineTuneError, match="cannot load"):
        fine_tune(tmp_path / "nothing", tmp_path / "out", ["a"], ["negative"], task_labels=TASK, label_map={},
                  settings=FAST)


def test_a_reviewed_label_outside_the_task_is_refused(tmp_path: Path, tiny_hf_model: Path) -> None:
    with pytest.raises(LabelMappingError, match="angry"):
        fine_tune(tiny_hf_model, tmp_path / "out", ["a"], ["angry"], task_labels=TASK, label_map={}, settings=FAST)


def test_the_gate_promotes_a_candidate_that_is_not_worse(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "copy"))
    result = evaluate_gate(copy, tiny_artifact, corpus_samples(), task_labels=TASK, margin=0.0,
                           predict=serving_predictor(gate_config(), "s1"))
    assert result.candidate_accuracy == result.current_accuracy and result.promote


def test_the_gate_rejects_a_worse_candidate(tiny_artifact: Path, tmp_path: Path) -> None:
    untrained = build_tiny_hf_model(tmp_path / "untrained-hf", seed=3, train_steps=0)
    worse = build_tiny_artifact(tmp_path / "untrained", model_dir=untrained)
    result = evaluate_gate(worse, tiny_artifact, corpus_samples(), task_labels=TASK, margin=0.05,
                           predict=serving_predictor(gate_config(), "s1"))
    assert result.candidate_accuracy < result.current_accuracy - 0.05
    assert not result.promote
