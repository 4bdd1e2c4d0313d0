"""Named errors of the model store, its manifests and label mappings."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class ModelStoreError(AutoAnnotatorError):
    """The model store cannot be read or written as asked."""


class VersionNotFound(ModelStoreError):
    """The specialist or version does not exist (or is not complete) in the store."""


class IntegrityError(ModelStoreError):
    """A fetched model file does not match the sha256 its manifest records."""


class ManifestError(ModelStoreError):
    """A manifest.json is missing, unreadable or has a field of the wrong type; the message names it."""


class LabelMapError(AutoAnnotatorError):
    """A model's own labels cannot be mapped onto the task labels without guessing.

    ``unmatched_model`` lists model labels that map nowhere, ``unsourced_task`` task labels that
    no model label feeds.
    """

    def __init__(self, message: str, unmatched_model: list[str] | None = None,
                 unsourced_task: list[str] | None = None) -> None:
        super().__init__(message)
        self.unmatched_model = unmatched_model or []
        self.unsourced_task = unsourced_task or []


class ReleaseError(ModelStoreError):
    """A model release could not be announced on ``model-releases`` (not acknowledged by the broker)."""
