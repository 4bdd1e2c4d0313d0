"""Provider choice: auto prefers TensorRT, then CUDA, then CPU; every fallback is logged and counted.

These machines have no GPU, so ONNX Runtime's list of available providers is stood in for. The
sessions are real: asked for TensorRT or CUDA, CPU-only ONNX Runtime warns and runs on the CPU,
which is exactly the silent fallback of onnxruntime-gpu without its libraries that the engine
must notice (it checks ``session.get_providers()``).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from autoannotator.artifacts.engine import InferenceEngine
from autoannotator.artifacts.exceptions import ProviderUnavailable
from autoannotator.artifacts.manifest import Manifest
from autoannotator.artifacts.providers import CPU, CUDA, TENSORRT, TensorRTOptions, candidates

from tests.helpers.metrics import counter
from tests.helpers.tiny_model import corpus_texts

ALL = [TENSORRT, CUDA, CPU]


def fallbacks(provider: str, fallback: str) -> float:
    """How often ``provider`` gave way to ``fallback`` (the Prometheus counter)."""
    return counter("autoannotator_specialist_provider_fallbacks_total", provider=provider, fallback=fallback)


class RecordingFactory:
    """Creates real CPU-capable sessions, remembers each ``providers`` argument, and can fail chosen ones."""

    def __init__(self, fail: str | None = None, fail_warm_up: str | None = None) -> None:
        self.calls: list[list[Any]] = []
        self.fail = fail
        self.fail_warm_up = fail_warm_up

    def __call__(self, path: str, options: ort.SessionOptions, providers: list[Any]) -> Any:
        self.calls.append(providers)
        primary = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if primary == self.fail:
            raise RuntimeError(f"{primary}: TensorRT engine build failed: unsupported node")
        session = ort.InferenceSession(path, options, providers=[CPU])
        return ClaimingSession(session, primary) if primary == self.fail_warm_up else session


class ClaimingSession:
    """A real session that reports ``primary`` as its provider and fails its first run (a failing engine build)."""

    def __init__(self, session: ort.InferenceSession, primary: str) -> None:
        self._session, self._primary = session, primary

    def get_providers(self) -> list[str]:
        return [self._primary, CPU]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("TensorRT EP failed to create engine from network")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.fixture
def artifact(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny artifact (TensorRT's cache folder is created inside it)."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))


def test_auto_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert candidates("auto", ALL) == [TENSORRT, CUDA, CPU]
    assert candidates("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert candidates("auto", ["AzureExecutionProvider", CPU]) == [CPU]


def test_explicit_tensorrt_may_fall_back_to_cuda_but_never_to_the_cpu() -> None:
    assert candidates("tensorrt", ALL) == [TENSORRT, CUDA]
    assert candidates("tensorrt", [TENSORRT, CPU]) == [TENSORRT]
    with pytest.raises(ProviderUnavailable, match="tensorrt was asked"):
        candidates("tensorrt", [CUDA, CPU])
    assert candidates("cpu", ALL) == [CPU]


def test_tensorrt_options_cover_the_configured_batch_and_sequence_range(tmp_path: Path) -> None:
    options = TensorRTOptions(cache_dir=tmp_path / "cache", fp16=True, max_batch_size=32, max_length=256)
    got = options.provider_options(["input_ids", "attention_mask"])
    assert got["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert got["trt_profile_opt_shapes"] == got["trt_profile_max_shapes"] == "input_ids:32x256,attention_mask:32x256"
    assert got["trt_engine_cache_enable"] == "True" and got["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert got["trt_fp16_enable"] == "True"
    assert (tmp_path / "cache").is_dir()


def test_auto_falls_back_step_by_step_when_gpu_sessions_run_on_the_cpu(
    artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = fallbacks("tensorrt", "cuda"), fallbacks("cuda", "cpu")
    with caplog.at_level(logging.WARNING, logger="autoannotator.artifacts.providers"):
        engine = InferenceEngine.from_artifact(artifact, provider="auto", available_providers=ALL)
    assert engine.provider == "cpu" and engine.providers == [CPU]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("provider tensorrt is not usable" in w and "falling back to cuda" in w for w in warnings), warnings
    assert any("provider cuda is not usable" in w and "runs on ['CPUExecutionProvider']" in w
               and "falling back to cpu" in w for w in warnings), warnings
    assert (fallbacks("tensorrt", "cuda"), fallbacks("cuda", "cpu")) == (before[0] + 1, before[1] + 1)
    assert engine.predict(corpus_texts()[:4]).shape == (4, 3)


def test_a_tensorrt_build_failure_falls_back_with_the_reason_logged(
    artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    factory = RecordingFactory(fail=TENSORRT)
    with caplog.at_level(logging.WARNING, logger="autoannotator.artifacts.providers"):
        engine = InferenceEngine.from_artifact(artifact, provider="auto", available_providers=[TENSORRT, CPU],
                                               session_factory=factory)
    assert engine.provider == "cpu"
    assert any("TensorRT engine build failed" in r.getMessage() and "falling back to cpu" in r.getMessage()
               for r in caplog.records)
    assert [c[0] if isinstance(c[0], str) else c[0][0] for c in factory.calls] == [TENSORRT, CPU]


def test_a_tensorrt_engine_that_fails_its_warm_up_batch_is_not_served(
    artifact: Path, caplog: pytest.LogCaptureFixture
) -> None:
    factory = RecordingFactory(fail_warm_up=TENSORRT)
    with caplog.at_level(logging.WARNING, logger="autoannotator.artifacts.providers"):
        engine = InferenceEngine.from_artifact(artifact, provider="auto", available_providers=[TENSORRT, CPU],
                                               session_factory=factory)
    assert engine.provider == "cpu"
    assert any("warm-up batch failed" in r.getMessage() for r in caplog.records)


def test_tensorrt_gets_the_configured_profile_and_caches_in_the_model_folder(artifact: Path) -> None:
    factory = RecordingFactory(fail=TENSORRT)
    InferenceEngine.from_artifact(artifact, provider="auto", available_providers=[TENSORRT, CPU],
                                  session_factory=factory, max_batch_size=16, max_length=64)
    name, options = factory.calls[0][0]
    assert name == TENSORRT and factory.calls[0][1:] == [CUDA, CPU]
    assert options["trt_engine_cache_path"] == str(artifact / "trt-cache")
    assert options["trt_profile_max_shapes"] == "input_ids:16x64,attention_mask:16x64,token_type_ids:16x64"
    assert options["trt_fp16_enable"] == "False"  # an fp32 artifact stays fp32


def test_a_configured_cache_folder_holds_one_subfolder_per_model(artifact: Path, tmp_path: Path) -> None:
    factory = RecordingFactory(fail=TENSORRT)
    InferenceEngine.from_artifact(artifact, provider="auto", available_providers=[TENSORRT, CPU],
                                  session_factory=factory, tensorrt_cache_dir=tmp_path / "trt")
    sha = Manifest.read(artifact).sha256
    assert factory.calls[0][0][1]["trt_engine_cache_path"] == str(tmp_path / "trt" / sha[:16])


def test_explicit_tensorrt_that_cannot_run_is_an_error_not_a_cpu_fallback(artifact: Path) -> None:
    with pytest.raises(ProviderUnavailable, match=r"tensorrt.*TensorRT engine build failed"):
        InferenceEngine.from_artifact(artifact, provider="tensorrt", available_providers=[TENSORRT, CPU],
                                      session_factory=RecordingFactory(fail=TENSORRT))


def test_explicit_cuda_that_silently_runs_on_the_cpu_is_an_error(artifact: Path) -> None:
    with pytest.raises(ProviderUnavailable, match=r"cuda: the session runs on \['CPUExecutionProvider'\]"):
        InferenceEngine.from_artifact(artifact, provider="cuda", available_providers=[CUDA, CPU])
