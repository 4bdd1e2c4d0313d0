"""The durable human-review queue (SQLite): what a person still has to label, and what they did.

An item moves ``open`` → ``labelled`` (a person chose a label; undo returns it to ``open`` while
the undo window lasts) → ``emitted`` (the reviewer produced its Label and ReviewedSample and the
broker acknowledged them). Because the queue survives restarts, the reviewer may commit the
offsets of records once they are in it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autoannotator.reviewer.exceptions import ReviewQueueError
from autoannotator.reviewer.metrics import REVIEW_QUEUE
from autoannotator.wire import HardSample


@dataclass
class QueueItem:
    """One record in the queue."""

    record_id: str
    hard: HardSample
    reason: str
    status: str
    label: str | None
    reviewer: str | None
    labelled_at: float | None


class ReviewQueue:
    """Thread-safe: the review page's thread writes labels, the service's thread emits them."""

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT UNIQUE NOT NULL, "
            "hard BLOB NOT NULL, reason TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open', label TEXT, "
            "reviewer TEXT, labelled_at REAL, enqueued_at REAL NOT NULL)"
        )
        self._db.commit()
        self._publish()

    def put(self, hard: HardSample, reason: str) -> bool:
        """Add a hard record (durably). False when it is already queued (a replay)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO items (record_id, hard, reason, enqueued_at) VALUES (?, ?, ?, ?)",
                (hard.record_id, hard.SerializeToString(), reason, time.time()),
            )
            self._db.commit()
        self._publish()
        return cur.rowcount == 1

    def open_items(self, limit: int = 50) -> list[QueueItem]:
        """The oldest items still waiting for a person."""
        return self._select("WHERE status='open' ORDER BY seq LIMIT ?", (limit,))

    def get(self, record_id: str) -> QueueItem | None:
        """One item by record id."""
        items = self._select("WHERE record_id=?", (record_id,))
        return items[0] if items else None

    def label(self, record_id: str, label: str, reviewer: str) -> None:
        """Record a person's label for an open item."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE items SET status='labelled', label=?, reviewer=?, labelled_at=? "
                "WHERE record_id=? AND status='open'",
                (label, reviewer, time.time(), record_id),
            )
            self._db.commit()
        if cur.rowcount != 1:
            raise ReviewQueueError(f"record {record_id!r} is not waiting for a label")
        self._publish()

    def undo(self, record_id: str) -> None:
        """Put a labelled item back in the queue (only before it was emitted)."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE items SET status='open', label=NULL, reviewer=NULL, labelled_at=NULL "
                "WHERE record_id=? AND status='labelled'",
                (record_id,),
            )
            self._db.commit()
        if cur.rowcount != 1:
            raise ReviewQueueError(f"record {record_id!r} has no label that can still be undone")
        self._publish()

    def due(self, undo_window_s: float, limit: int = 500) -> list[QueueItem]:
        """Labelled items whose undo window has passed: ready to flow out."""
        return self._select(
            "WHERE status='labelled' AND labelled_at <= ? ORDER BY labelled_at LIMIT ?",
            (time.time() - undo_window_s, limit),
        )

    def mark_emitted(self, record_ids: list[str]) -> None:
        """The broker acknowledged these items' outputs."""
        with self._lock:
            self._db.executemany(
                "UPDATE items SET status='emitted' WHERE record_id=? AND status='labelled'", [(r,) for r in record_ids]
            )
            self._db.commit()
        self._publish()

    def progress(self) -> dict[str, int]:
        """Item counts by status."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall()
        counts = {"open": 0, "labelled": 0, "emitted": 0}
        counts.update(dict(rows))
        return counts

    def _select(self, where: str, params: tuple) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT record_id, hard, reason, status, label, reviewer, labelled_at FROM items {where}", params
            ).fetchall()
        items = []
        for rid, blob, reason, status, label, reviewer, labelled_at in rows:
            hard = HardSample()
            hard.ParseFromString(blob)
            items.append(QueueItem(rid, hard, reason, status, label, reviewer, labelled_at))
        return items

    def _publish(self) -> None:
        for status, n in self.progress().items():
            REVIEW_QUEUE.labels(status).set(n)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
