"""Everything about a model artifact, in one layer that every service imports (and none re-implements).

- :mod:`.store`: immutable, versioned artifacts under one fsspec URI; :func:`.store.store_for`.
- :mod:`.manifest`: what an artifact is (labels, label map, sha256, lineage, metrics).
- :mod:`.export` (with :mod:`.convert`, :mod:`.parity`): a Hugging Face folder -> ONNX artifact.
- :mod:`.engine`: tokenizer + ONNX Runtime over one artifact; :func:`.engine.serving_engine`
  builds it as a specialist serves it (used by the specialist, the trainer's gate, calibration).
  :mod:`.providers` chooses the execution provider (TensorRT, CUDA, CPU, with logged fallbacks);
  :mod:`.iobuffers` holds the persistent per-shape-bucket IO-binding buffers of the GPU path.
- :mod:`.release`: announcing a version on ``model-releases`` (produced through :mod:`autoannotator.stream`).

Depends only on ``config``, ``wire``, ``stream`` and ``exceptions``; never on a service package.
This package's import stays light (no onnxruntime, torch or Kafka): import the module you need.
"""

from autoannotator.artifacts.exceptions import (
    IntegrityError,
    LabelMapError,
    ManifestError,
    ModelStoreError,
    ReleaseError,
    VersionNotFound,
)
from autoannotator.artifacts.manifest import Manifest, derive_label_map, task_index, task_probabilities

__all__ = [
    "IntegrityError",
    "LabelMapError",
    "Manifest",
    "ManifestError",
    "ModelStoreError",
    "ReleaseError",
    "VersionNotFound",
    "derive_label_map",
    "task_index",
    "task_probabilities",
]
