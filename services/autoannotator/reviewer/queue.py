"""The durable human-review queue (SQLite): what people still have to label, and what they did.

An item moves ``open`` → ``labelled`` (a person chose a label; undo returns it to ``open`` while
the undo window lasts) → ``emitted`` (the reviewer produced its Label and ReviewedSample and the
broker acknowledged them). Because the queue survives restarts, the reviewer may commit the
offsets of records once they are in it.

Revisions: an item's first label is revision 1 (an LLM audit item's LLM label already was, so a
person's answer to it is revision 2). A correction of an emitted item takes it back to
``labelled`` with the next revision; undoing a correction restores the emitted label.

Every person's answer is kept in ``answers`` (one per person and record): an item chosen for
overlap (``needed`` = 2) stays on other people's queues until a second person answered it, and
the answers give the agreement statistics (:mod:`autoannotator.reviewer.agreement`).
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

_COLUMNS = {  # added after the first release: created on old queue files
    "revision": "INTEGER NOT NULL DEFAULT 0",
    "needed": "INTEGER NOT NULL DEFAULT 1",
    "llm_label": "TEXT",
    "emitted_revision": "INTEGER NOT NULL DEFAULT 0",
    "emitted_label": "TEXT",
    "emitted_reviewer": "TEXT",
}
_FIELDS = "record_id, hard, reason, status, label, reviewer, labelled_at, revision, needed, llm_label, enqueued_at"


class LabelTaken(ReviewQueueError):
    """Someone else already gave this item the label it needed (or this person already answered it)."""


class NotYours(ReviewQueueError):
    """A person tried to undo or correct a label they did not give (and is not an admin)."""


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
    revision: int = 0
    needed: int = 1
    llm_label: str | None = None
    enqueued_at: float = 0.0


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
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (record_id TEXT NOT NULL, reviewer TEXT NOT NULL, label TEXT NOT NULL, "
            "at REAL NOT NULL, PRIMARY KEY (record_id, reviewer))"
        )
        have = {row[1] for row in self._db.execute("PRAGMA table_info(items)")}
        for name, decl in _COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE items ADD COLUMN {name} {decl}")
        if "revision" not in have:  # a queue from before revisions: given labels are revision 1
            self._db.execute("UPDATE items SET revision=1 WHERE status!='open'")
            self._db.execute("UPDATE items SET emitted_revision=1, emitted_label=label, emitted_reviewer=reviewer "
                             "WHERE status='emitted'")
            self._db.execute("INSERT OR IGNORE INTO answers (record_id, reviewer, label, at) SELECT record_id, "
                             "COALESCE(reviewer, 'human'), label, COALESCE(labelled_at, enqueued_at) FROM items "
                             "WHERE status!='open' AND label IS NOT NULL")
        self._db.commit()
        self._publish()

    def put(self, hard: HardSample, reason: str, *, needed: int = 1, llm_label: str | None = None) -> bool:
        """Add a hard record (durably). False when it is already queued (a replay).

        ``needed``: how many people answer it (2 for an overlap item). ``llm_label``: the label the
        LLM already published (an audit of the LLM); the person's label is then revision 2.
        """
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO items (record_id, hard, reason, enqueued_at, needed, llm_label, "
                "emitted_revision, emitted_label, emitted_reviewer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (hard.record_id, hard.SerializeToString(), reason, time.time(), max(1, needed), llm_label,
                 1 if llm_label is not None else 0, llm_label, "llm" if llm_label is not None else None),
            )
            self._db.commit()
        self._publish()
        return cur.rowcount == 1

    def open_items(self, limit: int = 50, reviewer: str | None = None) -> list[QueueItem]:
        """The oldest items still waiting for a person (for ``reviewer``: those they have not answered)."""
        if reviewer is None:
            return self._select("WHERE status='open' ORDER BY seq LIMIT ?", (limit,))
        return self._select(
            "WHERE (status='open' OR needed > (SELECT COUNT(*) FROM answers a WHERE a.record_id=items.record_id)) "
            "AND NOT EXISTS (SELECT 1 FROM answers a WHERE a.record_id=items.record_id AND a.reviewer=?) "
            "ORDER BY seq LIMIT ?",
            (reviewer, limit),
        )

    def open_count(self, reviewer: str) -> int:
        """How many items wait for ``reviewer``."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM items WHERE (status='open' OR needed > (SELECT COUNT(*) FROM answers a "
                "WHERE a.record_id=items.record_id)) AND NOT EXISTS (SELECT 1 FROM answers a "
                "WHERE a.record_id=items.record_id AND a.reviewer=?)",
                (reviewer,),
            ).fetchone()
        return int(n)

    def get(self, record_id: str) -> QueueItem | None:
        """One item by record id."""
        items = self._select("WHERE record_id=?", (record_id,))
        return items[0] if items else None

    def label(self, record_id: str, label: str, reviewer: str) -> bool:
        """Record a person's label. True when it is the item's label (flows out), False for a second opinion."""
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT status, reviewer, needed, (SELECT COUNT(*) FROM answers a WHERE a.record_id=items.record_id), "
                "EXISTS (SELECT 1 FROM answers a WHERE a.record_id=items.record_id AND a.reviewer=?) "
                "FROM items WHERE record_id=?",
                (reviewer, record_id),
            ).fetchone()
            if row is None:
                raise ReviewQueueError(f"record {record_id!r} is not in the review queue")
            status, by, needed, answered, mine = row
            if mine:
                raise LabelTaken(f"you already labelled record {record_id!r}")
            if status == "open":
                self._db.execute(
                    "UPDATE items SET status='labelled', label=?, reviewer=?, labelled_at=?, "
                    "revision=emitted_revision + 1 WHERE record_id=?",
                    (label, reviewer, now, record_id),
                )
                primary = True
            elif answered < needed:
                primary = False
            else:
                raise LabelTaken(f"record {record_id!r} was already labelled by {by}")
            self._db.execute("INSERT INTO answers (record_id, reviewer, label, at) VALUES (?, ?, ?, ?)",
                             (record_id, reviewer, label, now))
            self._db.commit()
        self._publish()
        return primary

    def undo(self, record_id: str, reviewer: str = "human", *, admin: bool = True) -> None:
        """Take back a label not yet emitted: ``reviewer``'s own, or anyone's for an admin."""
        with self._lock:
            row = self._db.execute(
                "SELECT status, reviewer, emitted_revision, emitted_reviewer FROM items WHERE record_id=?", (record_id,)
            ).fetchone()
            second = self._db.execute(
                "SELECT 1 FROM answers WHERE record_id=? AND reviewer=?", (record_id, reviewer)
            ).fetchone()
            if row is None or (row[0] != "labelled" and not (second and row[1] != reviewer)):
                raise ReviewQueueError(f"record {record_id!r} has no label that can still be undone")
            status, by, emitted_revision, emitted_by = row
            if status == "labelled" and (by == reviewer or admin):
                if emitted_revision and emitted_by != "llm":  # a correction: back to the emitted label
                    self._db.execute(
                        "UPDATE items SET status='emitted', label=emitted_label, reviewer=emitted_reviewer, "
                        "revision=emitted_revision WHERE record_id=?", (record_id,))
                else:
                    self._db.execute(
                        "UPDATE items SET status='open', label=NULL, reviewer=NULL, labelled_at=NULL, "
                        "revision=emitted_revision "
                        "WHERE record_id=?", (record_id,))
                    self._db.execute("DELETE FROM answers WHERE record_id=? AND reviewer=?", (record_id, by))
            elif second and by != reviewer:  # a second opinion: it never flows out
                self._db.execute("DELETE FROM answers WHERE record_id=? AND reviewer=?", (record_id, reviewer))
            else:
                raise NotYours(f"record {record_id!r} was labelled by {by}, not by you")
            self._db.commit()
        self._publish()

    def correct(self, record_id: str, label: str, reviewer: str, *, admin: bool = False) -> int:
        """Change a given label: ``reviewer``'s own (anyone's for an admin). Returns the new revision.

        Before the item was emitted the label is replaced in place; after, the item goes back to
        ``labelled`` with the next revision and flows out again once its undo window passed.
        """
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT status, reviewer, emitted_revision, revision FROM items WHERE record_id=?", (record_id,)
            ).fetchone()
            if row is None or row[0] == "open":
                raise ReviewQueueError(f"record {record_id!r} has no label to correct")
            status, by, emitted_revision, revision = row
            if by != reviewer and not admin:
                raise NotYours(f"record {record_id!r} was labelled by {by}, not by you")
            revision = revision if status == "labelled" else emitted_revision + 1
            self._db.execute(
                "UPDATE items SET status='labelled', label=?, reviewer=?, labelled_at=?, revision=? WHERE record_id=?",
                (label, reviewer, now, revision, record_id),
            )
            self._db.execute("INSERT OR REPLACE INTO answers (record_id, reviewer, label, at) VALUES (?, ?, ?, ?)",
                             (record_id, reviewer, label, now))
            self._db.commit()
        self._publish()
        return revision

    def recent(self, reviewer: str, limit: int = 30) -> list[dict]:
        """``reviewer``'s latest answers, newest first, with the item's state."""
        with self._lock:
            rows = self._db.execute(
                "SELECT a.record_id, a.label, a.at, i.status, i.reviewer, i.label, i.revision, i.labelled_at, i.hard "
                "FROM answers a JOIN items i ON i.record_id=a.record_id WHERE a.reviewer=? ORDER BY a.at DESC LIMIT ?",
                (reviewer, limit),
            ).fetchall()
        out = []
        for rid, mine, at, status, by, label, revision, labelled_at, blob in rows:
            hard = HardSample()
            hard.ParseFromString(blob)
            out.append({"id": rid, "text": hard.record.text[:300], "my_label": mine, "at": at, "status": status,
                        "label": label, "by": by, "revision": revision, "labelled_at": labelled_at,
                        "primary": by == reviewer})
        return out

    def answers(self) -> list[tuple[str, str, str]]:
        """Every person's answer: (record id, reviewer, label)."""
        with self._lock:
            return self._db.execute("SELECT record_id, reviewer, label FROM answers ORDER BY record_id, at").fetchall()

    def llm_audits(self) -> list[tuple[str, str]]:
        """(LLM label, the first person's label) for every audited LLM label a person answered."""
        with self._lock:
            return self._db.execute(
                "SELECT i.llm_label, "
                "(SELECT a.label FROM answers a WHERE a.record_id=i.record_id ORDER BY a.at LIMIT 1) "
                "FROM items i WHERE i.llm_label IS NOT NULL AND EXISTS "
                "(SELECT 1 FROM answers a WHERE a.record_id=i.record_id)"
            ).fetchall()

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
                "UPDATE items SET status='emitted', emitted_revision=revision, emitted_label=label, "
                "emitted_reviewer=reviewer WHERE record_id=? AND status='labelled'", [(r,) for r in record_ids]
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
            rows = self._db.execute(f"SELECT {_FIELDS} FROM items {where}", params).fetchall()
        items = []
        for rid, blob, reason, status, label, reviewer, labelled_at, revision, needed, llm_label, enq in rows:
            hard = HardSample()
            hard.ParseFromString(blob)
            items.append(QueueItem(rid, hard, reason, status, label, reviewer, labelled_at, revision, needed,
                                   llm_label, enq))
        return items

    def _publish(self) -> None:
        for status, n in self.progress().items():
            REVIEW_QUEUE.labels(status).set(n)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
