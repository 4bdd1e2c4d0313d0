"""The inference backend: a fast tokenizer and an ONNX Runtime session over one model artifact.

It uses the ``tokenizers`` library directly (not transformers), so the specialist image needs no
torch. Output is softmax probabilities in the *task's* label order: the artifact's manifest gives
the model's own labels in logit order and the map onto task labels; a model label that maps
nowhere is an error, never a guess.

Providers: ``cpu`` (``threads`` intra-op threads, 0 = ORT's default), ``cuda``, ``tensorrt`` or
``auto`` (TensorRT, then CUDA, then CPU); the choice, the fallbacks and their log lines live in
:mod:`.providers`. The provider reported is the one the session really uses
(``session.get_providers()``). On a GPU provider batches run through persistent IO-binding
buffers, one set per shape bucket (:mod:`.iobuffers`); on the CPU the plain path pads each batch
to its longest record only.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from autoannotator.artifacts.batching import plan_batches
from autoannotator.artifacts.exceptions import ArtifactError, InferenceError, ManifestError
from autoannotator.artifacts.iobuffers import BucketBuffers, ShapeBuckets
from autoannotator.artifacts.manifest import TOKENIZER_DIR, Manifest, task_index, task_probabilities
from autoannotator.artifacts.providers import (
    CPU,
    CUDA,
    GPU_PROVIDERS,
    TENSORRT,
    Provider,
    SessionFactory,
    TensorRTOptions,
    open_session,
    short_name,
)

if TYPE_CHECKING:
    from autoannotator.config import PipelineConfig

log = logging.getLogger(__name__)

__all__ = ["CPU", "CUDA", "TENSORRT", "InferenceEngine", "Provider"]
#: Folder of TensorRT's engine and timing caches inside an artifact (when no cache folder is configured).
TRT_CACHE_DIR = "trt-cache"


class InferenceEngine:
    """One loaded model version: tokenize, run, map to task labels. Thread-compatible, not thread-safe."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        *,
        version: str,
        model_labels: Sequence[str],
        task_labels: Sequence[str],
        label_map: Mapping[str, str],
        max_length: int,
        pad_id: int = 0,
        buffers: BucketBuffers | None = None,
        artifact_dir: Path | None = None,
        precision: str = "fp32",
    ) -> None:
        self.session = session
        self.precision = precision
        self.tokenizer = tokenizer
        self.version = version
        self.model_labels = list(model_labels)
        self.task_labels = list(task_labels)
        self.label_map = dict(label_map)
        self.max_length = max_length
        self.artifact_dir = artifact_dir
        # Raises LabelMapError (model label mapped nowhere, task label without a source): never a guess.
        self._index = task_index(
            Manifest(model_labels=self.model_labels, label_map=self.label_map, task_labels=self.task_labels)
        )
        self._pad_id = pad_id
        self._buffers = buffers
        self._input_names = {i.name for i in session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - self._input_names
        if missing:
            raise ArtifactError(f"model.onnx lacks inputs {sorted(missing)} (has {sorted(self._input_names)})")
        outputs = [o.name for o in session.get_outputs()]
        self._output = "logits" if "logits" in outputs else outputs[0]
        width = session.get_outputs()[outputs.index(self._output)].shape[-1]
        if isinstance(width, int) and width != len(self.model_labels):
            raise ArtifactError(f"model.onnx gives {width} logits but the manifest names {len(self.model_labels)}")
        tokenizer.no_padding()  # we pad per batch, to the batch's longest record
        tokenizer.enable_truncation(max_length)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_artifact(
        cls,
        path: str | Path,
        *,
        provider: Provider = "auto",
        threads: int = 0,
        int8: bool = False,
        task_labels: Sequence[str] | None = None,
        label_map: Mapping[str, str] | None = None,
        max_length: int | None = None,
        max_batch_size: int = 64,
        buffers: bool | None = None,
        tensorrt_cache_dir: str | Path | None = None,
        available_providers: Sequence[str] | None = None,
        session_factory: SessionFactory | None = None,
    ) -> InferenceEngine:
        """Load an artifact directory (``model.onnx``, ``tokenizer/``, ``manifest.json``).

        ``task_labels``/``label_map``/``max_length`` override the manifest's (the pipeline
        config's ``task.labels`` and ``specialists[].label_map`` win). ``int8`` quantizes an
        fp32 model dynamically at load (needs the ``onnx`` package). ``max_batch_size`` and
        ``max_length`` bound TensorRT's optimisation profile and the shape buckets. ``buffers``
        (default: on for a GPU provider) runs batches through persistent per-bucket IO-binding
        buffers. TensorRT caches its engines in ``tensorrt_cache_dir`` (per model sha256), else
        in the artifact's ``trt-cache/``. ``available_providers`` and ``session_factory`` stand in
        for ONNX Runtime's (what the provider-selection tests use).
        """
        path = Path(path)
        try:
            manifest = Manifest.read(path)
        except ManifestError as exc:
            raise ArtifactError(str(exc)) from exc
        model_file = path / manifest.onnx_file
        if not model_file.is_file():
            raise ArtifactError(f"{path}: no {manifest.onnx_file}")
        tokenizer_file = path / TOKENIZER_DIR / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ArtifactError(f"{path}: no tokenizer/tokenizer.json (a fast tokenizer is required)")
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:
            raise ArtifactError(f"{tokenizer_file}: cannot load tokenizer: {exc}") from exc
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        precision = manifest.precision
        length = max_length or manifest.max_length
        cache = Path(tensorrt_cache_dir) / manifest.sha256[:16] if tensorrt_cache_dir else path / TRT_CACHE_DIR
        trt = TensorRTOptions(cache_dir=cache, fp16=precision == "fp16", max_batch_size=max_batch_size,
                              max_length=length)
        scratch: Path | None = None
        try:
            if int8 and precision == "fp32":
                scratch = Path(tempfile.mkdtemp(prefix="aa-int8-"))
                model_file = _quantize_int8(model_file, scratch / "model.int8.onnx")
                precision = "int8"
            if manifest.optimization and provider in ("tensorrt", "auto"):
                log.info("%s: the graph holds ONNX Runtime's fused operators; under TensorRT they run on CUDA "
                         "beside the engine (export with --no-optimize for an all-TensorRT graph)", path)
            session = open_session(model_file, options, provider, tensorrt=trt, warm_up=_warm_up,
                                   available=available_providers, factory=session_factory)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        actual = session.get_providers()
        on_gpu = actual[0] in GPU_PROVIDERS
        engine = cls(
            session,
            tokenizer,
            version=manifest.version,
            model_labels=manifest.model_labels,
            task_labels=list(task_labels) if task_labels is not None else manifest.task_labels,
            label_map=dict(label_map) if label_map else manifest.label_map,
            max_length=length,
            pad_id=_pad_id(tokenizer, path / TOKENIZER_DIR),
            artifact_dir=path,
            precision=precision,
        )
        if on_gpu if buffers is None else buffers:
            engine._buffers = BucketBuffers(session, ShapeBuckets(max_batch_size, length), output=engine._output,
                                            width=len(engine.model_labels), pad_id=engine._pad_id,
                                            device="cuda" if on_gpu else "cpu")
        log.info(
            "loaded %s version %r (%s) on %s (asked: %s)%s",
            path, engine.version, precision, engine.provider, provider,
            " with per-bucket IO-binding buffers" if engine._buffers is not None else "",
        )
        return engine

    # -- properties ----------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        """Execution providers the session really uses, in priority order."""
        return list(self.session.get_providers())

    @property
    def provider(self) -> str:
        """Short name of the provider that runs the model: ``tensorrt``, ``cuda`` or ``cpu`` (or ORT's own name)."""
        return short_name(self.providers[0])

    @property
    def buffers(self) -> BucketBuffers | None:
        """The persistent IO-binding buffers (None: the plain path)."""
        return self._buffers

    def close(self) -> None:
        """Release the IO-binding buffers (the engine must not run afterwards)."""
        if self._buffers is not None:
            self._buffers.close()
            self._buffers = None

    # -- work ------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Encode texts (special tokens added, truncated to ``max_length``), unpadded."""
        return self.tokenizer.encode_batch(list(texts))

    def infer(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Probabilities (records x task labels) for one batch.

        With buffers: padded to the batch's shape bucket, run through the bucket's persistent
        IO binding. Without: padded to its longest record and run plainly.
        """
        if self._buffers is not None:
            try:
                logits = self._buffers.run(encodings)
            except Exception as exc:
                raise InferenceError(f"ONNX Runtime failed on a bucketed batch of {len(encodings)} records: "
                                     f"{exc}") from exc
            if logits is not None:
                return task_probabilities(logits, self._index, len(self.task_labels))
        return self._infer_plain(encodings)

    def _infer_plain(self, encodings: Sequence[Encoding]) -> np.ndarray:
        n = len(encodings)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((n, width), self._pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64) if "token_type_ids" in self._input_names else None
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[row, :k] = enc.ids
            mask[row, :k] = 1
            if types is not None:
                types[row, :k] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            feeds["token_type_ids"] = types
        try:
            logits = self.session.run([self._output], feeds)[0]
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed on a batch of {n} x {width} tokens: {exc}") from exc
        return task_probabilities(logits, self._index, len(self.task_labels))

    def predict(self, texts: Sequence[str], *, max_batch_tokens: int = 8192, max_batch_size: int = 64) -> np.ndarray:
        """Probabilities in task-label order for ``texts`` (same order as given)."""
        if not texts:
            return np.zeros((0, len(self.task_labels)), dtype=np.float32)
        encodings = self.tokenize(texts)
        out = np.empty((len(texts), len(self.task_labels)), dtype=np.float32)
        for batch in plan_batches([len(e.ids) for e in encodings], max_batch_tokens, max_batch_size):
            out[batch] = self.infer([encodings[i] for i in batch])
        return out


def serving_engine(config: PipelineConfig, name: str, folder: str | Path) -> InferenceEngine:
    """The engine for specialist ``name``'s artifact in ``folder``, built exactly as the specialist serves it.

    Provider, threads, int8, max_length, max_batch_size (TensorRT profile and shape buckets),
    the TensorRT cache folder and label_map come from ``specialists[name]``, the label order from
    ``task.labels``: the specialist, the trainer's gate and calibration all measure the model
    through this one function, so none of them scores something other than what is served.
    """
    spec = config.specialist(name)
    return InferenceEngine.from_artifact(
        folder,
        provider=spec.provider,
        threads=spec.threads,
        int8=spec.int8,
        task_labels=config.task.labels,
        label_map=spec.label_map or None,
        max_length=spec.max_length,
        max_batch_size=spec.max_batch_size,
        tensorrt_cache_dir=spec.tensorrt_cache_dir or None,
    )


def _warm_up(session: ort.InferenceSession) -> None:
    """One small batch: a GPU provider that cannot run the graph (a TensorRT build failure) fails here."""
    feeds = {i.name: np.ones((1, 8), dtype=np.int64) for i in session.get_inputs()}
    session.run(None, feeds)


def _pad_id(tokenizer: Tokenizer, folder: Path) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    config = folder / "tokenizer_config.json"
    if config.is_file():
        token = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return int(tokenizer.token_to_id("[PAD]") or 0)


def _quantize_int8(source: Path, target: Path) -> Path:
    try:
        import onnx  # noqa: F401 - onnxruntime's quantiser needs it
    except ImportError as exc:
        raise ArtifactError(f"int8: dynamic quantization needs the 'onnx' package ({exc}); "
                            "or export the artifact with --int8") from exc
    from autoannotator.artifacts.convert import quantize_int8

    quantize_int8(source, target)  # the exporter's settings: one quantisation recipe, not two
    return target
