"""The manifest of a model artifact and the mapping of a model's labels onto the task's labels.

Every artifact (what ``autoannotator export`` writes and what the store holds per version) carries a
``manifest.json``: which ONNX file to serve and its sha256, the model's own labels in logit order,
the ``label_map`` from those onto the task labels, precision, metrics, lineage. The paper's code
compared raw class indices across models; here a model's logits reach the task's label order only
through :func:`task_index`, which refuses to guess.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from autoannotator.artifacts.exceptions import LabelMapError, ManifestError

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_DIR = "weights"
PRECISIONS = ("fp32", "int8", "fp16")


@dataclass
class Manifest:
    """What a model artifact is: the file to serve, its checksum, its labels and its lineage.

    ``version`` and ``specialist`` are empty in an exported artifact until the store publishes it.
    """

    specialist: str = ""
    version: str = ""
    parent_version: str | None = None
    created_ms: int = 0
    onnx_file: str = ONNX_FILE
    sha256: str = ""
    # The model's own labels, in the order of its logits.
    model_labels: list[str] = field(default_factory=list)
    # Model label -> task label.
    label_map: dict[str, str] = field(default_factory=dict)
    task_labels: list[str] = field(default_factory=list)
    max_length: int = 128
    precision: str = "fp32"
    metrics: dict[str, float] = field(default_factory=dict)
    has_weights: bool = False
    source: str = ""
    # Largest |ONNX Runtime logit - torch logit| measured at export (None: not checked).
    parity_max_abs_diff: float | None = None
    # Relative path -> sha256 of every other file of a published version (filled in by the store).
    files: dict[str, str] = field(default_factory=dict)
    # How the graph was optimised at export ({} = not): tool, onnxruntime version, model type, count of
    # each fused operator, and the fp32 parity of the optimised graph against torch.
    optimization: dict[str, Any] = field(default_factory=dict)
    # This version's calibration, fitted by the trainer on held-out audit samples when it promoted
    # the version: {"temperature": T, "samples": n}. Empty: not calibrated (the voter uses 1.0).
    calibration: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as a JSON document (stable key order)."""
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest.json") -> Manifest:
        """Parse and type-check a manifest; errors name the field. Unknown keys (newer writers) are ignored."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{source}: not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        known = {f.name for f in fields(cls)}
        manifest = cls(**{k: v for k, v in doc.items() if k in known})
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        """Check every field's type and the label consistency; raise :class:`ManifestError` naming the field."""
        checks: list[tuple[str, bool]] = [
            ("specialist", isinstance(self.specialist, str)),
            ("version", isinstance(self.version, str)),
            ("parent_version", self.parent_version is None or isinstance(self.parent_version, str)),
            ("created_ms", isinstance(self.created_ms, int) and not isinstance(self.created_ms, bool)),
            ("onnx_file", isinstance(self.onnx_file, str) and bool(self.onnx_file) and "/" not in self.onnx_file),
            ("sha256", isinstance(self.sha256, str) and len(self.sha256) == 64),
            ("model_labels", _str_list(self.model_labels) and len(self.model_labels) >= 2),
            ("label_map", isinstance(self.label_map, dict)
             and all(isinstance(k, str) and isinstance(v, str) for k, v in self.label_map.items())),
            ("task_labels", _str_list(self.task_labels) and len(self.task_labels) >= 2),
            ("max_length", isinstance(self.max_length, int) and self.max_length > 0),
            ("precision", self.precision in PRECISIONS),
            ("metrics", isinstance(self.metrics, dict)
             and all(isinstance(k, str) and isinstance(v, int | float) for k, v in self.metrics.items())),
            ("has_weights", isinstance(self.has_weights, bool)),
            ("source", isinstance(self.source, str)),
            ("parity_max_abs_diff", self.parity_max_abs_diff is None or isinstance(self.parity_max_abs_diff,
                                                                                  int | float)),
            ("files", isinstance(self.files, dict)
             and all(isinstance(k, str) and isinstance(v, str) for k, v in self.files.items())),
            ("optimization", isinstance(self.optimization, dict)),
            ("calibration", isinstance(self.calibration, dict)
             and all(isinstance(k, str) and isinstance(v, int | float) for k, v in self.calibration.items())
             and self.calibration.get("temperature", 1.0) > 0),
        ]
        for name, ok in checks:
            if not ok:
                raise ManifestError(f"{source}: field {name!r} is invalid: {getattr(self, name)!r}")
        try:
            task_index(self)
        except LabelMapError as exc:
            raise ManifestError(f"{source}: field 'label_map': {exc}") from None

    def write(self, directory: str | Path) -> Path:
        """Write ``manifest.json`` into ``directory``; returns its path."""
        path = Path(directory) / MANIFEST_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """Read ``manifest.json`` from an artifact directory."""
        path = Path(directory) / MANIFEST_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read manifest: {exc.strerror}") from None
        return cls.from_json(text, str(path))


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def derive_label_map(model_labels: Sequence[str], task_labels: Sequence[str]) -> dict[str, str]:
    """Map each model label onto the task label of the same name (case-insensitive, trimmed).

    Raises :class:`LabelMapError` listing every model label without a same-named task label and
    every task label that no model label matches: such a model needs an explicit ``label_map``.
    """
    by_name = {label.strip().lower(): label for label in task_labels}
    mapping: dict[str, str] = {}
    unmatched = []
    for label in model_labels:
        target = by_name.get(label.strip().lower())
        if target is None:
            unmatched.append(label)
        else:
            mapping[label] = target
    unsourced = [label for label in task_labels if label not in mapping.values()]
    if unmatched or unsourced:
        raise LabelMapError(
            f"cannot match model labels to task labels by name: model labels without a task label: {unmatched}; "
            f"task labels no model label matches: {unsourced}; give an explicit label_map "
            f"(model labels {list(model_labels)}, task labels {list(task_labels)})",
            unmatched_model=unmatched,
            unsourced_task=unsourced,
        )
    return mapping


def task_index(
    manifest: Manifest,
    task_labels: Sequence[str] | None = None,
    label_map: Mapping[str, str] | None = None,
) -> list[int]:
    """For each model logit (in the model's order), the index of the task label it feeds.

    ``task_labels`` defaults to the manifest's (pass the config's ``task.labels`` to serve in the
    pipeline's order); ``label_map`` defaults to the manifest's (pass a specialist's configured
    override). Several model labels may feed one task label (their probabilities add up, see
    :func:`task_probabilities`). Raises :class:`LabelMapError` when a model label maps nowhere, maps
    onto an unknown task label, a map key is not a model label, or a task label has no source.
    """
    targets = list(task_labels if task_labels is not None else manifest.task_labels)
    mapping = dict(label_map if label_map is not None else manifest.label_map)
    position = {label: i for i, label in enumerate(targets)}
    stray_keys = sorted(set(mapping) - set(manifest.model_labels))
    unmapped = [label for label in manifest.model_labels if label not in mapping]
    unknown = sorted({v for v in mapping.values() if v not in position})
    if stray_keys or unmapped or unknown:
        raise LabelMapError(
            "label_map does not map the model's labels onto the task labels: "
            f"model labels mapped nowhere: {unmapped}; label_map keys that are not model labels: {stray_keys}; "
            f"targets that are not task labels: {unknown} (task labels {targets})",
            unmatched_model=unmapped,
        )
    index = [position[mapping[label]] for label in manifest.model_labels]
    unsourced = [label for i, label in enumerate(targets) if i not in index]
    if unsourced:
        raise LabelMapError(
            f"task labels that no model label maps onto: {unsourced} (label_map {mapping})",
            unsourced_task=unsourced,
        )
    return index


def task_probabilities(logits: np.ndarray, index: Sequence[int], n_task_labels: int) -> np.ndarray:
    """Softmax over the model's logits, then summed into task-label order by ``index`` (from :func:`task_index`).

    ``logits`` has shape (batch, n_model_labels); the result (batch, n_task_labels), float32.
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.zeros((probs.shape[0], n_task_labels), dtype=np.float64)
    for model_i, task_i in enumerate(index):
        out[:, task_i] += probs[:, model_i]
    return out.astype(np.float32)
