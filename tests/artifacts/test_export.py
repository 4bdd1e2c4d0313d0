"""The ONNX exporter: parity with torch at each precision, label-map derivation, failure modes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from autoannotator.artifacts import LabelMapError, Manifest, task_index, task_probabilities
from autoannotator.artifacts import convert as convert_module
from autoannotator.artifacts.exceptions import ExportError, ParityError
from autoannotator.artifacts.export import export_model
from autoannotator.artifacts.manifest import file_sha256
from transformers import AutoTokenizer

from tests.helpers.tiny_model import CORPUS, build_tiny_hf_model

TASK = ["negative", "neutral", "positive"]


def _relabelled(model_dir: Path, tmp_path: Path, labels: list[str]) -> Path:
    """A copy of the model whose config calls its classes ``labels`` (same weights)."""
    copy = Path(shutil.copytree(model_dir, tmp_path / "relabelled"))
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _ort_task_probs(artifact: Path, texts: list[str]) -> np.ndarray:
    manifest = Manifest.read(artifact)
    tokenizer = AutoTokenizer.from_pretrained(artifact / "tokenizer")
    session = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    enc = tokenizer(texts, padding=True, truncation=True, max_length=manifest.max_length, return_tensors="np")
    logits = session.run(None, {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    return task_probabilities(logits, task_index(manifest), len(manifest.task_labels))


def test_fp32_export_matches_torch_and_writes_the_artifact_layout(tiny_hf_model: Path, tmp_path: Path) -> None:
    report = export_model(tiny_hf_model, tmp_path / "art", task_labels=TASK)
    assert report.precision == "fp32"
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-3
    art = tmp_path / "art"
    assert (art / "model.onnx").is_file() and (art / "tokenizer" / "tokenizer.json").is_file()
    assert (art / "weights" / "config.json").is_file()
    manifest = Manifest.read(art)
    assert manifest.sha256 == report.sha256 == file_sha256(art / "model.onnx")
    assert manifest.model_labels == TASK and manifest.label_map == dict(zip(TASK, TASK, strict=True))
    assert manifest.version == "" and manifest.has_weights
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no staging folder left


def test_int8_export_stays_within_tolerance_and_keeps_the_predictions(tiny_hf_model: Path, tmp_path: Path) -> None:
    fp32 = export_model(tiny_hf_model, tmp_path / "fp32", task_labels=TASK)
    int8 = export_model(tiny_hf_model, tmp_path / "int8", task_labels=TASK, int8=True)
    assert int8.precision == "int8" and Manifest.read(tmp_path / "int8").precision == "int8"
    assert int8.max_abs_diff is not None and int8.max_abs_diff <= int8.tolerance
    texts = [text for text, _ in CORPUS]
    agree = (_ort_task_probs(tmp_path / "int8", texts).argmax(1) == _ort_task_probs(tmp_path / "fp32", texts).argmax(1))
    assert agree.mean() >= 0.9
    assert int8.sha256 != fp32.sha256


def test_fp16_export_reports_parity_or_says_why_not(tiny_hf_model: Path, tmp_path: Path) -> None:
    report = export_model(tiny_hf_model, tmp_path / "fp16", task_labels=TASK, fp16=True)
    assert report.precision == "fp16"
    if report.max_abs_diff is None:
        assert "fp16 parity not checked" in report.note
    else:
        assert report.max_abs_diff <= report.tolerance


def test_optimize_fuses_attention_and_layer_norm_and_keeps_parity(tiny_hf_model: Path, tmp_path: Path) -> None:
    import onnx

    plain = export_model(tiny_hf_model, tmp_path / "plain", task_labels=TASK, optimize=False)
    report = export_model(tiny_hf_model, tmp_path / "fused", task_labels=TASK, optimize=True)
    assert report.optimized and not plain.optimized
    optimization = Manifest.read(tmp_path / "fused").optimization
    assert optimization["tool"] == "onnxruntime.transformers.optimizer" and optimization["model_type"] == "bert"
    assert optimization["fused"]["Attention"] == 2  # one per layer of the tiny model
    assert optimization["fused"]["SkipLayerNormalization"] >= 2
    assert optimization["parity_max_abs_diff"] == report.fp32_max_abs_diff <= 1e-3
    ops = {node.op_type for node in onnx.load(str(tmp_path / "fused" / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= ops
    assert Manifest.read(tmp_path / "plain").optimization == {}
    texts = [text for text, _ in CORPUS]
    np.testing.assert_allclose(_ort_task_probs(tmp_path / "fused", texts), _ort_task_probs(tmp_path / "plain", texts),
                               atol=1e-4)
    assert "optimised  yes, onnxruntime.transformers.optimizer (" in report.summary()


def test_fp16_export_is_optimised_unless_told_not_to(tiny_hf_model: Path, tmp_path: Path) -> None:
    default = export_model(tiny_hf_model, tmp_path / "fp16", task_labels=TASK, fp16=True)
    assert default.optimized and Manifest.read(tmp_path / "fp16").optimization["fused"]["Attention"] == 2
    assert default.fp32_max_abs_diff <= 1e-3  # the fused fp32 graph, checked before the fp16 conversion
    unfused = export_model(tiny_hf_model, tmp_path / "fp16-plain", task_labels=TASK, fp16=True, optimize=False)
    assert not unfused.optimized and Manifest.read(tmp_path / "fp16-plain").optimization == {}


def test_an_optimised_graph_that_breaks_parity_is_refused(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def breaking(src: Path, dest: Path, **_: object) -> dict[str, object]:
        # An "optimiser" that changes what the graph computes: the classifier's bias is shifted.
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(src))
        for init in model.graph.initializer:
            if init.name.endswith("classifier.bias"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))
        onnx.save(model, str(dest))
        return {"tool": "broken", "fused": {}}

    monkeypatch.setattr(convert_module, "optimize_transformer", breaking)
    with pytest.raises(ParityError, match="optimised fp32 ONNX logits differ"):
        export_model(tiny_hf_model, tmp_path / "broken", task_labels=TASK, optimize=True)
    assert not (tmp_path / "broken").exists()


def test_model_with_its_own_label_order_serves_in_task_order(tmp_path: Path) -> None:
    model = build_tiny_hf_model(tmp_path / "hf", model_labels=("POS", "NEG", "NEU"), seed=1)
    export_model(model, tmp_path / "art", task_labels=TASK,
                 label_map={"POS": "positive", "NEG": "negative", "NEU": "neutral"})
    texts = [text for text, _ in CORPUS]
    predicted = [TASK[i] for i in _ort_task_probs(tmp_path / "art", texts).argmax(1)]
    accuracy = np.mean([p == gold for p, (_, gold) in zip(predicted, CORPUS, strict=True)])
    assert accuracy >= 0.8


def test_label_map_is_derived_by_case_insensitive_name(tiny_hf_model: Path, tmp_path: Path) -> None:
    model = _relabelled(tiny_hf_model, tmp_path, ["Negative", "NEUTRAL", "positive"])
    report = export_model(model, tmp_path / "art", task_labels=TASK)
    assert report.manifest.label_map == {"Negative": "negative", "NEUTRAL": "neutral", "positive": "positive"}


def test_unmatched_model_labels_are_listed_and_nothing_is_written(tiny_hf_model: Path, tmp_path: Path) -> None:
    model = _relabelled(tiny_hf_model, tmp_path, ["LABEL_0", "LABEL_1", "positive"])
    with pytest.raises(LabelMapError, match=r"\['LABEL_0', 'LABEL_1'\]"):
        export_model(model, tmp_path / "art", task_labels=TASK)
    assert not (tmp_path / "art").exists()


def test_explicit_label_map_onto_unknown_task_label_is_refused(tiny_hf_model: Path, tmp_path: Path) -> None:
    with pytest.raises(LabelMapError, match="angry"):
        export_model(tiny_hf_model, tmp_path / "art", task_labels=TASK,
                     label_map={"negative": "angry", "neutral": "neutral", "positive": "positive"})


def test_torch_onnx_is_used_when_optimum_fails(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("optimum unavailable")

    monkeypatch.setattr(convert_module, "_optimum_export", broken)
    report = export_model(tiny_hf_model, tmp_path / "art", task_labels=TASK)
    assert report.exporter == "torch.onnx"
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-3
    assert "torch.onnx" in report.manifest.source


def test_parity_above_tolerance_fails_and_leaves_no_artifact(tiny_hf_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ParityError) as info:
        export_model(tiny_hf_model, tmp_path / "art", task_labels=TASK, int8=True, tolerance=1e-9)
    assert info.value.max_abs_diff > 1e-9
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_output_folder_that_holds_files(tiny_hf_model: Path, tmp_path: Path) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_model(tiny_hf_model, tmp_path / "art", task_labels=TASK)
    assert [p.name for p in (tmp_path / "art").iterdir()] == ["keep.txt"]


def test_a_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"config\.json"):
        export_model(tmp_path, tmp_path / "art", task_labels=TASK)
