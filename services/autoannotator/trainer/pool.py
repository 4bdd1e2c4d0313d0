"""The durable pool of reviewed samples and the ledger of training rounds (SQLite, WAL).

The pool is the trainer's only memory. Everything a restart needs is derived from it:

* a sample is stored once per record id (``INSERT OR IGNORE``), so a replayed ``reviewed``
  message is never counted twice;
* each sample is assigned to the held-out split or the training split by a hash of its record
  id, fixed at insert time: held-out samples are never trained on, by any round;
* a round is *owed* for a specialist when ``beta`` samples arrived after the last round that
  finished (promoted, rejected or failed). A round that was running when the process died
  never finished, so it is owed again at the next start ("rounds owed" come from the pool, not
  from memory);
* the new samples of a round are the training samples after the last round that *completed*
  (promoted or rejected): a failed round consumes no data, its samples are retried later;
* audit samples (records the voter sent to review independently of their score) are flagged:
  they are the uniform sample of the stream that the gate estimates the LLM share on, and the
  held-out audit samples are what a promoted version's temperature is fitted on.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoannotator.trainer.exceptions import PoolError
from autoannotator.wire import PredictionStatus, ReviewedSample, now_ms

# Round statuses. Finished rounds count towards "beta since the last round"; completed ones also
# consume their new samples.
RUNNING, PROMOTED, REJECTED, FAILED, INTERRUPTED = "running", "promoted", "rejected", "failed", "interrupted"
FINISHED = (PROMOTED, REJECTED, FAILED)
COMPLETED = (PROMOTED, REJECTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    label TEXT NOT NULL,
    source INTEGER NOT NULL,
    holdout INTEGER NOT NULL,
    added_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    audit INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS samples_split ON samples (holdout, seq);
CREATE TABLE IF NOT EXISTS invalid_samples (
    record_id TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    added_ms INTEGER NOT NULL,
    payload BLOB
);
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY AUTOINCREMENT,
    specialist TEXT NOT NULL,
    status TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    upto_seq INTEGER NOT NULL,
    n_new INTEGER NOT NULL DEFAULT 0,
    n_replay INTEGER NOT NULL DEFAULT 0,
    n_holdout INTEGER NOT NULL DEFAULT 0,
    candidate_accuracy REAL,
    current_accuracy REAL,
    parent_version TEXT,
    version TEXT,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    duration_s REAL,
    error TEXT,
    metrics TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS rounds_specialist ON rounds (specialist, round_id);
CREATE TABLE IF NOT EXISTS round_samples (
    round_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    PRIMARY KEY (round_id, seq)
);
"""


def is_holdout(record_id: str, fraction: float) -> bool:
    """Whether a record id belongs to the held-out split: a stable hash, independent of arrival order."""
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True, slots=True)
class PoolSample:
    """One stored reviewed sample: what training and evaluation need."""

    seq: int
    record_id: str
    text: str
    label: str
    # An audit sample: chosen by the voter independently of its score (a uniform sample of the stream).
    audit: bool = False


@dataclass(slots=True)
class RoundRecord:
    """One row of the round ledger."""

    round_id: int
    specialist: str
    status: str
    from_seq: int
    upto_seq: int
    n_new: int = 0
    n_replay: int = 0
    n_holdout: int = 0
    candidate_accuracy: float | None = None
    current_accuracy: float | None = None
    parent_version: str | None = None
    version: str | None = None
    started_ms: int = 0
    finished_ms: int | None = None
    duration_s: float | None = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoundData:
    """What one round trains on and evaluates on."""

    from_seq: int
    upto_seq: int
    new: list[PoolSample]
    replay: list[PoolSample]
    holdout: list[PoolSample]

    @property
    def holdout_audit(self) -> list[PoolSample]:
        """The held-out audit samples: the uniform sample the gate estimates the LLM share on."""
        return [s for s in self.holdout if s.audit]

    @property
    def new_audit(self) -> int:
        """How many of the new training samples are audit samples."""
        return sum(s.audit for s in self.new)


class SamplePool:
    """The pool: thread-safe (one connection behind a lock), durable on every write."""

    def __init__(self, path: str | Path, holdout_fraction: float, audit_holdout_fraction: float | None = None) -> None:
        self.path = Path(path)
        self.holdout_fraction = holdout_fraction
        # Audit samples may be held out at their own share (None: the same as the others).
        self.audit_holdout_fraction = holdout_fraction if audit_holdout_fraction is None else audit_holdout_fraction
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a sample is on disk before the loop commits its offset.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
            if "audit" not in columns:  # a pool written before audit samples existed
                self._db.execute("ALTER TABLE samples ADD COLUMN audit INTEGER NOT NULL DEFAULT 0")
        except sqlite3.Error as exc:
            raise PoolError(f"cannot open the sample pool at {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise PoolError(f"sample pool {self.path}: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise PoolError(f"sample pool {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # -- samples ----------------------------------------------------------------------------
    def add(self, samples: Iterable[ReviewedSample]) -> int:
        """Store valid reviewed samples in one transaction; returns how many were new (not duplicates)."""
        added = 0
        stamp = now_ms()
        with self._tx() as db:
            for sample in samples:
                cur = db.execute(
                    "INSERT OR IGNORE INTO samples (record_id, text, label, source, holdout, added_ms, payload,"
                    " audit) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sample.record_id,
                        sample.record.text,
                        sample.label,
                        int(sample.source),
                        int(is_holdout(sample.record_id, self._holdout_share(sample))),
                        stamp,
                        sample.SerializeToString(),
                        int(sample.audit),
                    ),
                )
                added += cur.rowcount
        return added

    def add_invalid(self, record_id: str, reason: str, detail: str, payload: bytes | None) -> None:
        """Keep a reviewed message that cannot be trained on, with the reason (nothing is lost)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO invalid_samples (record_id, reason, detail, added_ms, payload)"
                " VALUES (?, ?, ?, ?, ?)",
                (record_id, reason, detail, now_ms(), payload),
            )

    def invalid(self) -> list[tuple[str, str, str]]:
        """Stored invalid messages: (record id, reason, detail)."""
        return [tuple(row) for row in self._query("SELECT record_id, reason, detail FROM invalid_samples")]

    def counts(self) -> dict[str, int]:
        """Samples per split: ``{"train": n, "holdout": m}``."""
        rows = dict(self._query("SELECT holdout, COUNT(*) FROM samples GROUP BY holdout"))
        return {"train": rows.get(0, 0), "holdout": rows.get(1, 0)}

    def audit_counts(self) -> dict[str, int]:
        """Audit samples per split: ``{"train": n, "holdout": m}``."""
        rows = dict(self._query("SELECT holdout, COUNT(*) FROM samples WHERE audit = 1 GROUP BY holdout"))
        return {"train": rows.get(0, 0), "holdout": rows.get(1, 0)}

    def size(self) -> int:
        """All stored samples."""
        return sum(self.counts().values())

    def max_seq(self) -> int:
        """Sequence number of the newest sample (0 when empty)."""
        return self._query("SELECT COALESCE(MAX(seq), 0) FROM samples")[0][0]

    def _samples(self, where: str, params: Sequence[Any]) -> list[PoolSample]:
        rows = self._query(
            f"SELECT seq, record_id, text, label, audit FROM samples WHERE {where} ORDER BY seq", params
        )
        return [PoolSample(seq, rid, text, label, bool(audit)) for seq, rid, text, label, audit in rows]

    def _holdout_share(self, sample: ReviewedSample) -> float:
        """``audit_holdout_fraction`` for an audit sample some model version voted on, else ``holdout_fraction``.

        Records no model voted on (a cold start: every prediction NO_MODEL) are what the first
        versions are built from, so they are held out at the plain share.
        """
        voted = any(p.status == PredictionStatus.PREDICTION_STATUS_OK for p in sample.predictions)
        return self.audit_holdout_fraction if sample.audit and voted else self.holdout_fraction

    def audit_samples(self, limit: int) -> list[PoolSample]:
        """The newest ``limit`` audit samples (both splits), oldest first."""
        rows = self._query("SELECT seq, record_id, text, label, audit FROM samples WHERE audit = 1 ORDER BY seq DESC"
                           " LIMIT ?", (limit,))
        return [PoolSample(seq, rid, text, label, bool(audit)) for seq, rid, text, label, audit in reversed(rows)]

    def reviewed(self, record_ids: Sequence[str]) -> dict[str, ReviewedSample]:
        """The stored ``ReviewedSample`` messages of these ids (with the predictions the voter saw)."""
        found: dict[str, ReviewedSample] = {}
        ids = list(record_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for rid, payload in self._query(f"SELECT record_id, payload FROM samples WHERE record_id IN ({marks})",
                                            chunk):
                found[rid] = ReviewedSample.FromString(payload)
        return found

    # -- rounds owed ------------------------------------------------------------------------
    def _last_upto(self, specialist: str, statuses: Sequence[str]) -> int:
        marks = ",".join("?" * len(statuses))
        row = self._query(
            f"SELECT COALESCE(MAX(upto_seq), 0) FROM rounds WHERE specialist = ? AND status IN ({marks})",
            (specialist, *statuses),
        )
        return row[0][0]

    def pending(self, specialist: str) -> int:
        """Samples stored after the specialist's last finished round."""
        last = self._last_upto(specialist, FINISHED)
        return self._query("SELECT COUNT(*) FROM samples WHERE seq > ?", (last,))[0][0]

    def owed(self, specialist: str, beta: int) -> bool:
        """Whether a round is due: ``beta`` new samples since the last finished round."""
        return self.pending(specialist) >= beta

    def round_data(self, specialist: str, replay_fraction: float, seed: int) -> RoundData:
        """New training samples since the last completed round, a replay sample of older ones, the held-out set."""
        from_seq = self._last_upto(specialist, COMPLETED)
        upto_seq = self.max_seq()
        new = self._samples("holdout = 0 AND seq > ? AND seq <= ?", (from_seq, upto_seq))
        older = self._samples("holdout = 0 AND seq <= ?", (from_seq,))
        n_replay = min(len(older), round(replay_fraction * len(new)))
        # Seeded by the window, so a redone round draws the same replay sample.
        replay = sorted(random.Random(f"{seed}:{specialist}:{upto_seq}").sample(older, n_replay), key=lambda s: s.seq)
        holdout = self._samples("holdout = 1 AND seq <= ?", (upto_seq,))
        return RoundData(from_seq, upto_seq, new, replay, holdout)

    # -- the round ledger -------------------------------------------------------------------
    def begin_round(self, specialist: str, data: RoundData, parent_version: str | None) -> int:
        """Record a started round and the samples it uses; returns its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO rounds (specialist, status, from_seq, upto_seq, n_new, n_replay, n_holdout,"
                " parent_version, started_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    specialist, RUNNING, data.from_seq, data.upto_seq, len(data.new), len(data.replay),
                    len(data.holdout), parent_version, now_ms(),
                ),
            )
            round_id = int(cur.lastrowid)
            db.executemany(
                "INSERT INTO round_samples (round_id, seq, role) VALUES (?, ?, ?)",
                [(round_id, s.seq, "new") for s in data.new]
                + [(round_id, s.seq, "replay") for s in data.replay]
                + [(round_id, s.seq, "holdout") for s in data.holdout],
            )
        return round_id

    def finish_round(
        self,
        round_id: int,
        status: str,
        *,
        candidate_accuracy: float | None = None,
        current_accuracy: float | None = None,
        version: str | None = None,
        duration_s: float | None = None,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Record a round's outcome."""
        with self._tx() as db:
            db.execute(
                "UPDATE rounds SET status = ?, candidate_accuracy = ?, current_accuracy = ?, version = ?,"
                " finished_ms = ?, duration_s = ?, error = ?, metrics = ? WHERE round_id = ?",
                (
                    status, candidate_accuracy, current_accuracy, version, now_ms(), duration_s, error,
                    json.dumps(metrics or {}, sort_keys=True), round_id,
                ),
            )

    def interrupt_running(self) -> int:
        """Mark rounds left running by a dead process as interrupted (they are owed again)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE rounds SET status = ?, error = ?, finished_ms = ? WHERE status = ?",
                (INTERRUPTED, "the trainer stopped during the round", now_ms(), RUNNING),
            )
            return cur.rowcount

    def round_samples(self, round_id: int, role: str) -> list[int]:
        """Sequence numbers a round used in a role (new / replay / holdout)."""
        rows = self._query(
            "SELECT seq FROM round_samples WHERE round_id = ? AND role = ? ORDER BY seq", (round_id, role)
        )
        return [row[0] for row in rows]

    def rounds(self, specialist: str | None = None) -> list[RoundRecord]:
        """The ledger, oldest first (optionally one specialist's)."""
        cols = (
            "round_id, specialist, status, from_seq, upto_seq, n_new, n_replay, n_holdout, candidate_accuracy,"
            " current_accuracy, parent_version, version, started_ms, finished_ms, duration_s, error, metrics"
        )
        if specialist is None:
            rows = self._query(f"SELECT {cols} FROM rounds ORDER BY round_id")
        else:
            rows = self._query(f"SELECT {cols} FROM rounds WHERE specialist = ? ORDER BY round_id", (specialist,))
        return [RoundRecord(*row[:-1], metrics=json.loads(row[-1])) for row in rows]
