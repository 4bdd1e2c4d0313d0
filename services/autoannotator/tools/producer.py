"""Reading CSV / JSONL files of texts and sending them to the ``texts`` topic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import AutoAnnotatorError, DeliveryError
from autoannotator.rowfiles import is_jsonl
from autoannotator.rowfiles import read_rows as rows_of
from autoannotator.stream.kafka import make_producer
from autoannotator.wire import TextRecord, encode_text_record, now_ms


class InputFileError(AutoAnnotatorError):
    """An input file cannot be read as CSV or JSONL of texts."""


@dataclass(frozen=True)
class InputRow:
    """One row of an input file: id (file-derived when the file has none), text, other fields as meta."""

    id: str
    text: str
    meta: dict[str, str]
    generated_id: bool


def read_rows(path: Path, *, id_column: str = "id", text_column: str = "text") -> Iterator[InputRow]:
    """Rows of a ``.csv`` or ``.jsonl`` file. Missing ids become ``<file stem>:<row number>``.

    Ids derived from the row position make a re-run of the same file idempotent downstream.
    """
    suffix = path.suffix.lower()
    if suffix != ".csv" and not is_jsonl(path):
        raise InputFileError(f"{path}: unsupported input file type {suffix!r} (use .csv or .jsonl)")
    jsonl = is_jsonl(path)
    for ordinal, (line, row) in enumerate(rows_of(path, InputFileError), start=1):
        if text_column not in row:
            raise InputFileError(f"{path}:{line}: no {text_column!r} field (fields: {sorted(row)})")
        number = line if jsonl else ordinal  # ids as ever: the JSON line, the CSV row
        text = row[text_column]
        raw_id = row.get(id_column)
        generated = raw_id in (None, "")
        rid = f"{path.stem}:{number}" if generated else str(raw_id)
        meta = {
            str(k): v if isinstance(v, str) else json.dumps(v)
            for k, v in row.items()
            if k not in (id_column, text_column) and v is not None
        }
        yield InputRow(rid, text if isinstance(text, str) else json.dumps(text), meta, generated)


@dataclass(frozen=True)
class ProduceResult:
    """What a file upload sent."""

    count: int
    generated_ids: int
    ids: list[str]


def produce_file(
    config: PipelineConfig,
    bootstrap: str,
    path: Path,
    *,
    id_column: str = "id",
    text_column: str = "text",
    limit: int | None = None,
    progress: bool = True,
) -> ProduceResult:
    """Send a file's rows to ``texts`` in the configured input format; waits for every ack."""
    producer = make_producer(config.kafka, bootstrap)
    topic = config.kafka.topic("texts")
    errors: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(err.str())

    ids: list[str] = []
    generated = 0
    rows = read_rows(path, id_column=id_column, text_column=text_column)
    for row in tqdm(rows, desc=f"produce {path.name}", unit="rec", disable=not progress):
        if limit is not None and len(ids) >= limit:
            break
        record = TextRecord(id=row.id, text=row.text, meta=row.meta, created_ms=now_ms())
        value = encode_text_record(record, config.input.format)
        while True:
            try:
                producer.produce(topic, value, key=row.id, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        ids.append(row.id)
        generated += row.generated_id
    remaining = producer.flush(60)
    if remaining or errors:
        raise DeliveryError(f"{remaining} records unacknowledged, {len(errors)} failed: {errors[:3]}")
    return ProduceResult(len(ids), generated, ids)
