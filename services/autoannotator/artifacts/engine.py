"""The inference backend: a fast tokenizer and an ONNX Runtime session over one model artifact.

It uses the ``tokenizers`` library directly (not transformers), so the specialist image needs no
torch. Output is softmax probabilities in the *task's* label order: the artifact's manifest gives
the model's own labels in logit order and the map onto task labels; a model label that maps
nowhere is an error, never a guess.

Providers: ``cpu`` (``threads`` intra-op threads, 0 = ORT's default), ``cuda`` (IO binding; an
fp16 artifact runs in fp16) or ``auto`` (CUDA when ORT offers it, else CPU). onnxruntime-gpu
falls back to CPU silently when the CUDA libraries are missing, so the provider reported is the
one the session really uses (``session.get_providers()``), and an explicit ``cuda`` that fell
back is an error.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding, Tokenizer

from autoannotator.artifacts.batching import plan_batches
from autoannotator.artifacts.exceptions import ArtifactError, InferenceError, ManifestError, ProviderUnavailable
from autoannotator.artifacts.manifest import TOKENIZER_DIR, Manifest, task_index, task_probabilities

if TYPE_CHECKING:
    from autoannotator.config import PipelineConfig

log = logging.getLogger(__name__)

Provider = Literal["auto", "cpu", "cuda"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


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
        io_binding: bool = False,
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
        self._io_binding = io_binding
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
    ) -> InferenceEngine:
        """Load an artifact directory (``model.onnx``, ``tokenizer/``, ``manifest.json``).

        ``task_labels``/``label_map``/``max_length`` override the manifest's (the pipeline
        config's ``task.labels`` and ``specialists[].label_map`` win). ``int8`` quantizes an
        fp32 model dynamically at load (needs the ``onnx`` package).
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
        providers, io_binding = _providers(provider)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        precision = manifest.precision
        scratch: Path | None = None
        try:
            if int8 and precision == "fp32":
                scratch = Path(tempfile.mkdtemp(prefix="aa-int8-"))
                model_file = _quantize_int8(model_file, scratch / "model.int8.onnx")
                precision = "int8"
            try:
                session = ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
            except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
                raise ArtifactError(f"{model_file}: ONNX Runtime cannot load it: {exc}") from exc
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        actual = session.get_providers()
        if provider == "cuda" and CUDA not in actual:
            raise ProviderUnavailable(f"provider: cuda was asked but the session runs on {actual}")
        engine = cls(
            session,
            tokenizer,
            version=manifest.version,
            model_labels=manifest.model_labels,
            task_labels=list(task_labels) if task_labels is not None else manifest.task_labels,
            label_map=dict(label_map) if label_map else manifest.label_map,
            max_length=max_length or manifest.max_length,
            pad_id=_pad_id(tokenizer, path / TOKENIZER_DIR),
            io_binding=io_binding and CUDA in actual,
            artifact_dir=path,
            precision=precision,
        )
        log.info(
            "loaded %s version %r (%s) on %s%s",
            path, engine.version, precision, actual[0], " with IO binding" if engine._io_binding else "",
        )
        return engine

    # -- properties ----------------------------------------------------------------------------
    @property
    def providers(self) -> list[str]:
        """Execution providers the session really uses, in priority order."""
        return list(self.session.get_providers())

    @property
    def provider(self) -> str:
        """Short name of the provider that runs the model: ``cuda`` or ``cpu`` (or ORT's own name)."""
        first = self.providers[0]
        return {CUDA: "cuda", CPU: "cpu"}.get(first, first)

    # -- work ------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[Encoding]:
        """Encode texts (special tokens added, truncated to ``max_length``), unpadded."""
        return self.tokenizer.encode_batch(list(texts))

    def infer(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Probabilities (records x task labels) for one batch, padded to its longest record."""
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
            logits = self._run_bound(feeds) if self._io_binding else self.session.run([self._output], feeds)[0]
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

    def _run_bound(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # IO binding: inputs copied to the device once, logits left there until we fetch them.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output(self._output, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


def serving_engine(config: PipelineConfig, name: str, folder: str | Path) -> InferenceEngine:
    """The engine for specialist ``name``'s artifact in ``folder``, built exactly as the specialist serves it.

    Provider, threads, int8, max_length and label_map come from ``specialists[name]``, the label
    order from ``task.labels``: the specialist, the trainer's gate and calibration all measure the
    model through this one function, so none of them scores something other than what is served.
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
    )


def _providers(provider: Provider) -> tuple[list[str], bool]:
    available = ort.get_available_providers()
    if provider == "cpu":
        return [CPU], False
    if provider == "cuda":
        if CUDA not in available:
            raise ProviderUnavailable(f"provider: cuda was asked but ONNX Runtime offers only {available}")
        return [CUDA, CPU], True
    return ([CUDA, CPU], True) if CUDA in available else ([CPU], False)


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
