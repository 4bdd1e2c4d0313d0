"""Reading a labelled file (CSV or JSON lines of text and label) for ``autoannotator train``.

Every problem names the file and the row (the line number, counting the CSV header as line 1):
a missing column, an empty text, a label outside ``task.labels``. Nothing is skipped or
guessed: a file with one bad row trains nothing, because a silently dropped or re-mapped row
would train the specialists on a label set the user did not choose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from autoannotator.config import PipelineConfig
from autoannotator.rowfiles import read_rows
from autoannotator.trainer.exceptions import TrainerError


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
    for line, doc in read_rows(path, LabelledFileError, required=(text_column, label_column)):
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


def read_reviewed(config: PipelineConfig, bootstrap: str, n: int, *, timeout_s: float = 30.0) -> list[LabelledRow]:
    """The first ``n`` trainable records of the ``reviewed`` topic (``train --from-stream N``), oldest first.

    What the reviewer labelled during a cold start, as training rows: one per record id (its
    highest revision: a person's correction wins over the first answer). A sample the trainer
    could not train on either (empty text, a label outside ``task.labels``) is left out and
    counted in the error when too few remain; ``line`` is the sample's position on the topic.
    """
    from autoannotator.exceptions import BadInput
    from autoannotator.stream.reader import TopicReader
    from autoannotator.trainer.service import parse_reviewed

    if n < 1:
        raise TrainerError("--from-stream: give a number of reviewed records of at least 1")
    with TopicReader(config.kafka, bootstrap, "reviewed") as reader:
        messages = sorted(reader.drain(timeout_s), key=lambda m: (m.timestamp_ms, m.partition, m.offset))
    best: dict[str, tuple[int, int, str, str]] = {}  # id -> (first position, revision, text, label)
    unusable = 0
    for position, msg in enumerate(messages, start=1):
        try:
            sample = parse_reviewed(msg, config.task.labels)
        except BadInput:
            unusable += 1
            continue
        first, revision = best.get(sample.record_id, (position, -1, "", ""))[:2]
        if sample.revision >= revision:
            best[sample.record_id] = (first, sample.revision, sample.record.text, sample.label)
    ordered = sorted(best.values())
    if len(ordered) < n:
        raise TrainerError(f"--from-stream {n}: the reviewed topic has {len(ordered)} trainable records "
                           f"({unusable} unusable); let the pipeline review more, or ask for fewer")
    rows = [LabelledRow(text, label, first) for first, _, text, label in ordered[:n]]
    missing = [label for label in config.task.labels if label not in {row.label for row in rows}]
    if missing:
        raise TrainerError(f"--from-stream {n}: no reviewed example of label(s) {missing} among them; "
                           "every task label needs at least one")
    return rows
