"""The model catalog: public facts about text-classification models on the Hugging Face Hub.

``catalog.json`` ships beside this module. Each entry records what the model card and ``config.json``
publish: the id, a description, the pipeline tag, the labels (``id2label`` names, in order), what
generic names such as ``LABEL_0`` mean according to the card, downloads, parameters, licence and
architecture. A figure that is not known is ``null``, never estimated; ``autoannotator catalog refresh``
fills figures in from the hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autoannotator.planner.exceptions import CatalogError

CATALOG_PATH = Path(__file__).with_name("catalog.json")


class ModelCard(BaseModel):
    """What the catalog knows about one hub model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
    description: str = Field(min_length=1)
    pipeline_tag: str = "text-classification"
    # The model's id2label names in index order; None when not recorded.
    labels: list[str] | None = None
    # The card's stated meaning of a label (LABEL_0 -> negative); only where the card says so.
    label_meanings: dict[str, str] = Field(default_factory=dict)
    downloads: int | None = Field(default=None, ge=0)
    parameters: int | None = Field(default=None, ge=0)
    licence: str | None = None
    architecture: str | None = None
    # The checkpoint this model was fine-tuned from (diversity: not k fine-tunes of one checkpoint).
    base_model: str | None = None
    # ISO 639-1 codes of the text it was trained on, or ["multilingual"]; None when not recorded.
    languages: list[str] | None = None

    def speaks(self, language: str | None) -> bool:
        """Whether the model is meant for text in ``language`` (None or unknown languages: assume yes)."""
        if language is None or self.languages is None:
            return True
        return language in self.languages or "multilingual" in self.languages

    @model_validator(mode="after")
    def _meanings_name_labels(self) -> ModelCard:
        if self.labels is not None:
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels must be unique")
            stray = set(self.label_meanings) - set(self.labels)
            if stray:
                raise ValueError(f"label_meanings names labels not in labels: {sorted(stray)}")
        return self

    @property
    def author(self) -> str:
        """The hub namespace (organisation or user); legacy ids without one count as their own author."""
        return self.id.split("/", 1)[0] if "/" in self.id else self.id

    def embedding_text(self) -> str:
        """The text embedded for similarity: the model's description (the paper's Eq. 1)."""
        return self.description


@dataclass(frozen=True)
class Catalog:
    """The loaded catalog: its cards and the hash of the bytes they came from (cache key of embeddings)."""

    cards: tuple[ModelCard, ...]
    sha256: str
    source: str

    def get(self, model_id: str) -> ModelCard:
        """The card of ``model_id``."""
        for card in self.cards:
            if card.id == model_id:
                return card
        raise CatalogError(f"{self.source}: no model {model_id!r} in the catalog")


def default_catalog_path() -> Path:
    """The catalog in use: ``$AUTOANNOTATOR_CATALOG`` if set, else the one shipped with the package."""
    return Path(os.environ.get("AUTOANNOTATOR_CATALOG") or CATALOG_PATH)


def parse_catalog(raw: bytes, source: str) -> Catalog:
    """Validate catalog JSON; errors name the entry and the field."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise CatalogError(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise CatalogError(f"{source}: expected an object with a 'models' list")
    cards: list[ModelCard] = []
    for i, entry in enumerate(doc["models"]):
        try:
            cards.append(ModelCard.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("id", "?") if isinstance(entry, dict) else "?"
            fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<entry>'}: {e['msg']}" for e in exc.errors())
            raise CatalogError(f"{source}: models.{i} ({name}): {fields}") from None
    ids = [card.id for card in cards]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CatalogError(f"{source}: duplicate model ids {dupes}")
    return Catalog(tuple(cards), hashlib.sha256(raw).hexdigest(), source)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file (default: :func:`default_catalog_path`)."""
    path = Path(path) if path else default_catalog_path()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror}") from None
    return parse_catalog(raw, str(path))


def dump_catalog(cards: list[ModelCard], note: str) -> str:
    """Catalog JSON for ``cards`` (what ``catalog refresh`` writes)."""
    doc = {"version": 1, "note": note, "models": [card.model_dump(mode="json") for card in cards]}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def write_catalog(path: str | Path, cards: list[ModelCard], note: str) -> None:
    """Write the catalog atomically: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_catalog(cards, note), encoding="utf-8")
    os.replace(tmp, path)
