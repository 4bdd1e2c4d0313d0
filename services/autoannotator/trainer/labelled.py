"""Reading a labelled file (CSV or JSON lines of text and label) for ``autoannotator train``.

Every problem names the file and the row (the line number, counting the CSV header as line 1):
a missing column, an empty text, a label outside ``task.labels``. Nothing is skipped or
guessed: a file with one bad row trains nothing, because a silently dropped or re-mapped row
would train the specialists on a label set the user did not choose.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoannotator.trainer.exceptions import TrainerError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class LabelledFileError(TrainerError):
    """A labelled file cannot be used as it is; the message names the file and the row."""


@dataclass(frozen=True, slots=True)
class LabelledRow:
    """One training example and where it came from."""

    text: str
    label: str
    line: int


def read_labelled(
    path: str | Path, labels: Sequence[str], *, text_column: str = "text", label_column: str = "label"
) -> list[LabelledRow]:
    """All rows of a CSV (header ``text,label``) or JSONL file (``{"text": ..., "label": ...}`` per line)."""
    path = Path(path)
    known = set(labels)
    rows: list[LabelledRow] = []
    for line, doc in _records(path, text_column, label_column):
        text = doc.get(text_column)
        label = doc.get(label_column)
        if text is None:
            raise LabelledFileError(f"{path}:{line}: missing column {text_column!r}")
        if label is None:
            raise LabelledFileError(f"{path}:{line}: missing column {label_column!r}")
        if not isinstance(text, str) or not text.strip():
            raise LabelledFileError(f"{path}:{line}: empty text in column {text_column!r}")
        label = str(label).strip()
        if label not in known:
            raise LabelledFileError(f"{path}:{line}: label {label!r} is not one of task.labels {list(labels)}")
        rows.append(LabelledRow(text, label, line))
    if not rows:
        raise LabelledFileError(f"{path}: no rows")
    missing = [label for label in labels if label not in {row.label for row in rows}]
    if missing:
        raise LabelledFileError(f"{path}: no example of label(s) {missing}; every task label needs at least one")
    return rows


def _records(path: Path, text_column: str, label_column: str) -> Iterator[tuple[int, dict]]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise LabelledFileError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        if path.suffix.lower() in JSONL_SUFFIXES:
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    doc = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise LabelledFileError(f"{path}:{line}: not JSON: {exc.msg}") from None
                if not isinstance(doc, dict):
                    raise LabelledFileError(f"{path}:{line}: expected a JSON object, got {type(doc).__name__}")
                yield line, doc
            return
        reader = csv.DictReader(handle)
        missing = [c for c in (text_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelledFileError(f"{path}:1: missing column(s) {missing} in the header {reader.fieldnames}")
        for row in reader:
            yield reader.line_num, row
