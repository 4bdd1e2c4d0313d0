"""The specialist's inference engine and batcher, against real tiny ONNX models (no broker)."""

from __future__ import annotations

import shutil
from itertools import permutations
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from autoannotator.artifacts.batching import plan_batches
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.exceptions import ArtifactError, LabelMapError, ProviderUnavailable
from autoannotator.artifacts.manifest import Manifest
from autoannotator.specialist.batcher import TokenBudgetBatcher
from transformers import AutoTokenizer

from tests.helpers.tiny_model import CORPUS, build_tiny_artifact, corpus_texts

TASK = ["negative", "neutral", "positive"]


def direct_ort_probs(artifact: Path, texts: list[str]) -> np.ndarray:
    """Softmax of the model's logits, in the MODEL's label order, by a plain ORT run (one padded batch)."""
    tokenizer = AutoTokenizer.from_pretrained(artifact / "tokenizer")
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    logits = session.run(["logits"], {k: v.astype(np.int64) for k, v in enc.items() if k in names})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def reordered_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose own labels are POS, NEG, NEU (logit order unlike the task's)."""
    return build_tiny_artifact(
        tmp_path_factory.mktemp("reordered") / "artifact",
        model_labels=("POS", "NEG", "NEU"),
        label_map={"POS": "positive", "NEG": "negative", "NEU": "neutral"},
    )


def test_predictions_match_a_direct_onnx_runtime_run(tiny_artifact: Path) -> None:
    engine = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", threads=1)
    texts = corpus_texts()
    # Small batches of mixed lengths: padding per batch must not change any record's probabilities.
    got = engine.predict(texts, max_batch_tokens=256, max_batch_size=7)
    want = direct_ort_probs(tiny_artifact, texts)  # model order == task order for this artifact
    assert got.shape == (len(texts), 3)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_probabilities_come_in_task_order_when_the_model_orders_its_labels_differently(
    reordered_artifact: Path,
) -> None:
    engine = InferenceEngine.from_artifact(reordered_artifact, provider="cpu", threads=1)
    texts = corpus_texts()
    got = engine.predict(texts)
    model_order = direct_ort_probs(reordered_artifact, texts)  # columns POS, NEG, NEU
    assert engine.task_labels == TASK
    np.testing.assert_allclose(got, model_order[:, [1, 2, 0]], atol=1e-5)


def test_mapped_labels_mean_the_same_sentiment(reordered_artifact: Path) -> None:
    # The model was fitted with POS/NEG/NEU meaning positive/negative/neutral: after mapping, its
    # picks agree with the corpus's sentiment better than under any other assignment of labels.
    engine = InferenceEngine.from_artifact(reordered_artifact, provider="cpu", threads=1)
    picked = engine.predict(corpus_texts()).argmax(axis=1)
    truth = np.array([TASK.index(sentiment) for _, sentiment in CORPUS])
    accuracy = {perm: float(np.mean(np.array(perm)[picked] == truth)) for perm in permutations(range(3))}
    assert max(accuracy, key=accuracy.get) == (0, 1, 2)
    assert accuracy[(0, 1, 2)] > 0.5


def test_a_model_label_mapped_nowhere_is_refused(reordered_artifact: Path) -> None:
    with pytest.raises(LabelMapError, match="NEU"):
        InferenceEngine.from_artifact(
            reordered_artifact, provider="cpu", label_map={"POS": "positive", "NEG": "negative"}
        )


def test_the_config_label_map_overrides_the_manifest(reordered_artifact: Path) -> None:
    swapped = {"POS": "negative", "NEG": "positive", "NEU": "neutral"}
    engine = InferenceEngine.from_artifact(reordered_artifact, provider="cpu", label_map=swapped)
    model_order = direct_ort_probs(reordered_artifact, corpus_texts()[:4])
    np.testing.assert_allclose(engine.predict(corpus_texts()[:4]), model_order[:, [0, 2, 1]], atol=1e-5)


def test_engine_reports_the_provider_the_session_really_uses(tiny_artifact: Path) -> None:
    engine = InferenceEngine.from_artifact(tiny_artifact, provider="auto")
    assert engine.providers == engine.session.get_providers()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert engine.provider == "cpu"


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA build is installed")
def test_asking_for_cuda_without_it_is_an_error_naming_the_provider(tiny_artifact: Path) -> None:
    with pytest.raises(ProviderUnavailable, match="provider: cuda"):
        InferenceEngine.from_artifact(tiny_artifact, provider="cuda")


def test_dynamic_int8_agrees_with_fp32(tiny_artifact: Path) -> None:
    fp32 = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", threads=1)
    int8 = InferenceEngine.from_artifact(tiny_artifact, provider="cpu", threads=1, int8=True)
    texts = corpus_texts()
    assert int8.precision == "int8"
    np.testing.assert_allclose(int8.predict(texts), fp32.predict(texts), atol=0.05)


def test_version_comes_from_the_manifest(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))
    manifest = Manifest.read(copy)
    manifest.version = "v7"
    manifest.write(copy)
    assert InferenceEngine.from_artifact(copy, provider="cpu").version == "v7"


def test_a_broken_onnx_file_is_an_artifact_error(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))
    (copy / "model.onnx").write_bytes(b"this is not an onnx graph")
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load"):
        InferenceEngine.from_artifact(copy, provider="cpu")


def test_batches_respect_the_token_budget_and_the_size_limit() -> None:
    lengths = [5, 40, 7, 12, 33, 6, 20, 9, 100, 3]
    batches = plan_batches(lengths, max_batch_tokens=64, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or max(lengths[i] for i in batch) * len(batch) <= 64
    # Sorted by length: a batch never mixes a short record with one longer than the next batch's shortest.
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)


def test_a_partial_batch_waits_until_max_wait_or_flush() -> None:
    batcher: TokenBudgetBatcher[str] = TokenBudgetBatcher(64, 4, max_wait_s=60, specialist="t")
    batcher.add(["a", "b", "c", "d", "e"], [8, 8, 8, 8, 8])
    assert batcher.take() == [["a", "b", "c", "d"]]  # full by size: leaves at once
    assert batcher.items() == ["e"]  # the rest waits for company
    assert batcher.take(flush=True) == [["e"]]
    assert len(batcher) == 0


def test_a_partial_batch_leaves_when_its_oldest_record_is_due() -> None:
    batcher: TokenBudgetBatcher[str] = TokenBudgetBatcher(64, 4, max_wait_s=0.0, specialist="t")
    batcher.add(["a"], [8])
    assert batcher.due()
    assert batcher.take() == [["a"]]
