"""A persistent label cache keyed by (model, prompt version, text hash).

A text the LLM already labelled under the same model and the same prompt is never sent again:
re-deliveries after a crash, duplicates in the stream and repeated texts cost nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from autoannotator.reviewer.metrics import CACHE


class LabelCache:
    """SQLite-backed; ``path=None`` keeps it in memory (tests, dry-runs)."""

    def __init__(self, path: str | Path | None) -> None:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path is not None else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS labels (model TEXT NOT NULL, prompt_version TEXT NOT NULL, "
            "text_hash TEXT NOT NULL, label TEXT NOT NULL, created REAL NOT NULL, "
            "PRIMARY KEY (model, prompt_version, text_hash))"
        )
        self._db.commit()

    def get(self, model: str, prompt_version: str, text_hash: str) -> str | None:
        """The cached label, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT label FROM labels WHERE model=? AND prompt_version=? AND text_hash=?",
                (model, prompt_version, text_hash),
            ).fetchone()
        CACHE.labels("hit" if row else "miss").inc()
        return row[0] if row else None

    def put(self, model: str, prompt_version: str, text_hash: str, label: str) -> None:
        """Remember a validated label."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?)",
                (model, prompt_version, text_hash, label, time.time()),
            )
            self._db.commit()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
