"""Execution providers: which to try, in what order, with which options, and what really runs.

``provider`` of a specialist is ``tensorrt``, ``cuda``, ``cpu`` or ``auto``:

- ``auto`` tries TensorRT, then CUDA, then the CPU, each only when ONNX Runtime offers it;
- ``tensorrt`` tries TensorRT, then CUDA (a TensorRT engine build can fail on a graph CUDA runs);
  never the CPU: a GPU deployment serving from the CPU is an outage, not a fallback;
- ``cuda`` and ``cpu`` try only themselves.

A candidate counts as working only when the session *really* runs on it
(``session.get_providers()``; onnxruntime-gpu silently drops a provider whose libraries are
missing) and, for a GPU provider, a warm-up batch succeeds (TensorRT builds its engine there).
Every fallback is a WARNING naming the provider, the reason and the next candidate, and counts in
``autoannotator_specialist_provider_fallbacks_total``; never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import onnxruntime as ort

from autoannotator.artifacts.exceptions import ArtifactError, ProviderUnavailable
from autoannotator.artifacts.metrics import PROVIDER_FALLBACKS

log = logging.getLogger(__name__)

Provider = Literal["auto", "tensorrt", "cuda", "cpu"]

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SHORT_NAMES = {TENSORRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}
GPU_PROVIDERS = (TENSORRT, CUDA)

#: ``factory(model_path, session_options, providers)`` -> a session; ``ort.InferenceSession`` by default.
SessionFactory = Callable[[str, ort.SessionOptions, list[Any]], ort.InferenceSession]


def short_name(provider: str) -> str:
    """``tensorrt`` / ``cuda`` / ``cpu`` for ORT's provider names (other names unchanged)."""
    return SHORT_NAMES.get(provider, provider)


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT settings: where engines are cached, precision, and the shape range they cover.

    One optimisation profile spans 1 x 1 to ``max_batch_size`` x ``max_length`` (optimal at the
    maximum, the shape a loaded specialist runs most), so one engine serves every batch the
    batcher forms; it is built once and then read from ``cache_dir``.
    """

    cache_dir: Path
    fp16: bool
    max_batch_size: int
    max_length: int

    def provider_options(self, input_names: Sequence[str]) -> dict[str, str]:
        """The TensorRT execution provider's options for a graph with these (batch x sequence) inputs."""

        def shapes(batch: int, length: int) -> str:
            return ",".join(f"{name}:{batch}x{length}" for name in input_names)

        self.cache_dir.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails this candidate, logged
        cache = str(self.cache_dir)
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
            "trt_fp16_enable": str(self.fp16),
            "trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(self.max_batch_size, self.max_length),
            "trt_profile_max_shapes": shapes(self.max_batch_size, self.max_length),
        }


def candidates(requested: Provider, available: Sequence[str]) -> list[str]:
    """ORT providers to try for ``requested``, best first, given those ONNX Runtime offers."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ProviderUnavailable(f"provider: cuda was asked but ONNX Runtime offers only {list(available)}")
        return [CUDA]
    if requested == "tensorrt":
        if TENSORRT not in available:
            raise ProviderUnavailable(f"provider: tensorrt was asked but ONNX Runtime offers only {list(available)}")
        return [TENSORRT] + ([CUDA] if CUDA in available else [])
    if requested == "auto":
        return [p for p in GPU_PROVIDERS if p in available] + [CPU]
    raise ProviderUnavailable(f"provider: unknown provider {requested!r}; use auto, tensorrt, cuda or cpu")


def provider_chain(primary: str, tensorrt: TensorRTOptions | None, input_names: Sequence[str]) -> list[Any]:
    """The ``providers`` argument of a session led by ``primary`` (nodes it cannot run go to the next)."""
    if primary == TENSORRT:
        if tensorrt is None:
            raise ProviderUnavailable("provider: tensorrt needs TensorRT options (cache folder, shapes)")
        return [(TENSORRT, tensorrt.provider_options(input_names)), CUDA, CPU]
    if primary == CUDA:
        return [CUDA, CPU]
    return [CPU]


def input_names(model_file: Path) -> list[str]:
    """The graph's inputs, read by a cheap CPU session without graph optimisation."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_file), sess_options=options, providers=[CPU])
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
        raise ArtifactError(f"{model_file}: ONNX Runtime cannot load it: {exc}") from exc
    return [i.name for i in session.get_inputs()]


def open_session(
    model_file: Path,
    options: ort.SessionOptions,
    requested: Provider,
    *,
    tensorrt: TensorRTOptions | None = None,
    warm_up: Callable[[ort.InferenceSession], None] | None = None,
    available: Sequence[str] | None = None,
    factory: SessionFactory | None = None,
) -> ort.InferenceSession:
    """A session on the best working provider for ``requested``; logs each fallback and why.

    Raises :class:`ArtifactError` when the CPU, as the last candidate, cannot load the file at all,
    :class:`ProviderUnavailable` when no candidate works otherwise (each reason in the message).
    """
    available = list(ort.get_available_providers() if available is None else available)
    factory = factory or _default_factory
    order = candidates(requested, available)
    names = input_names(model_file) if TENSORRT in order else []
    reasons: list[str] = []
    for position, primary in enumerate(order):
        last = position == len(order) - 1
        try:
            session = factory(str(model_file), options, provider_chain(primary, tensorrt, names))
        except Exception as exc:  # ORT raises its own types; a provider's build errors among them
            reason = f"session not created: {type(exc).__name__}: {_first_line(exc)}"
            if last and primary == CPU:  # the CPU loads every valid graph: the file itself is at fault
                detail = "; ".join([*reasons, f"{short_name(primary)}: {reason}"])
                raise ArtifactError(f"{model_file}: ONNX Runtime cannot load it ({detail})") from exc
        else:
            actual = session.get_providers()
            if actual and actual[0] == primary:
                if warm_up is None or primary == CPU:
                    return session
                try:
                    warm_up(session)
                    return session
                except Exception as exc:  # a TensorRT engine build fails here, on the first run
                    reason = f"warm-up batch failed: {type(exc).__name__}: {_first_line(exc)}"
            else:
                reason = f"the session runs on {actual} instead"
        reasons.append(f"{short_name(primary)}: {reason}")
        if last:
            raise ProviderUnavailable(f"provider: {requested}: no candidate works ({'; '.join(reasons)})")
        following = order[position + 1]
        PROVIDER_FALLBACKS.labels(short_name(primary), short_name(following)).inc()
        log.warning("provider %s is not usable for %s (%s); falling back to %s",
                    short_name(primary), model_file, reason, short_name(following))
    raise AssertionError("unreachable: the candidate list is never empty")


def _default_factory(path: str, options: ort.SessionOptions, providers: list[Any]) -> ort.InferenceSession:
    return ort.InferenceSession(path, sess_options=options, providers=providers)


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else ""
