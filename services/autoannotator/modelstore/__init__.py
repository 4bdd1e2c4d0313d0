"""The model store: immutable, versioned model artifacts under one fsspec URI, and their releases.

Layout: ``<store>/<specialist>/<version>/{model.onnx, tokenizer/, weights/, manifest.json}``
(:mod:`.store`); what an artifact is (:mod:`.manifest`); announcing a version on
``model-releases`` (:mod:`.release`).
"""

from autoannotator.modelstore.exceptions import (
    IntegrityError,
    LabelMapError,
    ManifestError,
    ModelStoreError,
    ReleaseError,
    VersionNotFound,
)
from autoannotator.modelstore.manifest import Manifest, derive_label_map, task_index, task_probabilities

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
