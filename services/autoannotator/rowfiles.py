"""Rows of CSV and JSON-lines files, numbered by line (the one reader behind ``produce`` and ``train``).

Every row comes with its line number, so a caller's error can name the file and the row: for CSV
the line the row ends on (the header is line 1), for JSON lines the line itself. Blank JSON lines
are skipped; a line that is not a JSON object raises the caller's error class, naming the line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

#: Suffixes read as JSON lines (one object per line); everything else a caller accepts is CSV.
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def is_jsonl(path: Path) -> bool:
    """Whether ``path`` is read as JSON lines (by its suffix)."""
    return path.suffix.lower() in JSONL_SUFFIXES


def read_rows(path: Path, error: type[Exception], *, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """``(line, row)`` for every row of a CSV or JSON-lines file.

    ``error`` is raised (message ``<path>:<line>: ...``) when the file cannot be opened, a JSON
    line is not an object, or a CSV header lacks one of the ``required`` columns.
    """
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        if is_jsonl(path):
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    doc = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise error(f"{path}:{line}: not JSON: {exc.msg}") from None
                if not isinstance(doc, dict):
                    raise error(f"{path}:{line}: expected a JSON object, got {type(doc).__name__}")
                yield line, doc
            return
        reader = csv.DictReader(handle)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise error(f"{path}:1: missing column(s) {missing} in the header {reader.fieldnames}")
        for row in reader:
            yield reader.line_num, row
