"""Bytes <-> objects for every topic: the one place that knows the wire formats.

Our own topics carry the protobuf messages of ``proto/autoannotator/v1/records.proto``. The
``texts`` topic also accepts JSON (``{"id": ..., "text": ..., "meta": {...}}``) or raw UTF-8,
chosen per message by its ``content-type`` Kafka header (:data:`CONTENT_TYPES`), else by
``input.format``. The ``labels`` and ``rejected`` topics are protobuf or, with
``output.format: json``, JSON objects (:func:`encode`); :func:`decode` reads either. A record
without a key gets the id ``<topic>:<partition>:<offset>``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from autoannotator.exceptions import BadInput
from autoannotator.v1.records_pb2 import (
    HardSample,
    Label,
    LabelSource,
    ModelRelease,
    Prediction,
    PredictionStatus,
    Rejection,
    ReviewedSample,
    TextRecord,
)

__all__ = [
    "TOPICS",
    "HardSample",
    "Label",
    "LabelSource",
    "ModelRelease",
    "Prediction",
    "PredictionStatus",
    "Rejection",
    "ReviewedSample",
    "TextRecord",
    "decode",
    "decode_text_record",
    "encode",
    "encode_text_record",
    "input_format",
    "label_source_name",
    "now_ms",
    "record_id",
    "to_json",
]

InputFormat = Literal["protobuf", "json", "text"]
OutputFormat = Literal["protobuf", "json"]

# ``content-type`` header value (parameters such as ``; charset=utf-8`` ignored) -> input format.
CONTENT_TYPES: dict[str, InputFormat] = {
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/json": "json",
    "text/plain": "text",
}
# Topics that outside consumers read; ``output.format: json`` writes them as JSON objects.
JSON_OUTPUT_TOPICS = frozenset({"labels", "rejected"})

# Logical topic name -> message type of its values.
TOPICS: dict[str, type[Message]] = {
    "texts": TextRecord,
    "predictions": Prediction,
    "labels": Label,
    "hard": HardSample,
    "reviewed": ReviewedSample,
    "rejected": Rejection,
    "model-releases": ModelRelease,
}


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def record_id(key: bytes | None, topic: str, partition: int, offset: int) -> str:
    """The record id: the message key, or ``<topic>:<partition>:<offset>`` when there is none."""
    if key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.hex()
    return f"{topic}:{partition}:{offset}"


@dataclass(frozen=True, slots=True)
class RawMessage:
    """What the loop hands a service: one consumed message, broker-independent."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    # Re-read from below the committed offset only to rebuild a processor's memory
    # (:attr:`Processor.replay_window`): already handled before, never to be acted on again.
    replay: bool = False
    # Kafka headers as (name, value) pairs; ``content-type`` chooses the input format of a ``texts`` message.
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def record_id(self) -> str:
        """Id of the record this message is about."""
        return record_id(self.key, self.topic, self.partition, self.offset)


def input_format(msg: RawMessage, default: InputFormat) -> InputFormat:
    """The message's format: its ``content-type`` header when it has one, else ``default`` (``input.format``).

    An unsupported content type raises :class:`BadInput` (``undecodable``) naming it, rather than
    parsing the bytes as something they say they are not.
    """
    for name, raw in msg.headers:
        if name.lower() != "content-type":
            continue
        value = (raw or b"").decode("utf-8", "replace").split(";", 1)[0].strip().lower()
        if not value:
            return default
        fmt = CONTENT_TYPES.get(value)
        if fmt is None:
            raise BadInput("undecodable", f"unsupported content-type header {value!r}; use one of "
                                          f"{sorted(CONTENT_TYPES)}")
        return fmt
    return default


def decode_text_record(msg: RawMessage, fmt: InputFormat, max_text_bytes: int) -> TextRecord:
    """Decode one ``texts`` message into a TextRecord, or raise :class:`BadInput` with a reason.

    ``fmt`` is the default format; a ``content-type`` header on the message overrides it.
    Reasons: ``undecodable`` (bytes are not the message's format), ``bad_schema`` (JSON of the
    wrong shape), ``empty`` (no text after stripping whitespace), ``too_large`` (over the limit).
    """
    fmt = input_format(msg, fmt)
    value = msg.value or b""
    if len(value) > max_text_bytes * 4 + 1024:  # cheap guard before parsing a huge payload
        raise BadInput("too_large", f"{len(value)} bytes exceeds the input limit of {max_text_bytes}")
    rid = msg.record_id
    if fmt == "protobuf":
        record = TextRecord()
        try:
            record.ParseFromString(value)
        except DecodeError as exc:
            raise BadInput("undecodable", f"not a TextRecord protobuf: {exc}") from None
        if not record.id:
            record.id = rid
    elif fmt == "json":
        record = _text_record_from_json(value, rid)
    else:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput("undecodable", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
        record = TextRecord(id=rid, text=text)
    if msg.key and record.id != rid:
        # The key decides the partition and the join; a body id that disagrees would split a record.
        record.meta["body_id"] = record.id
        record.id = rid
    if not record.created_ms:
        record.created_ms = msg.timestamp_ms or now_ms()
    _check_text(record.text, max_text_bytes)
    return record


def _text_record_from_json(value: bytes, rid: str) -> TextRecord:
    try:
        doc = json.loads(value.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadInput("undecodable", f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise BadInput("undecodable", f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise BadInput("bad_schema", f"expected a JSON object, got {type(doc).__name__}")
    text = doc.get("text")
    if not isinstance(text, str):
        got = "missing" if text is None else type(text).__name__
        raise BadInput("bad_schema", f"field 'text' must be a string ({got})")
    body_id = doc.get("id", rid)
    if not isinstance(body_id, str | int) or isinstance(body_id, bool):
        raise BadInput("bad_schema", f"field 'id' must be a string or integer ({type(body_id).__name__})")
    meta = doc.get("meta", {}) or {}
    if not isinstance(meta, dict):
        raise BadInput("bad_schema", f"field 'meta' must be an object ({type(meta).__name__})")
    return TextRecord(
        id=str(body_id),
        text=text,
        meta={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()},
    )


def _check_text(text: str, max_text_bytes: int) -> None:
    if not text.strip():
        raise BadInput("empty", "text is empty or whitespace only")
    size = len(text.encode("utf-8"))
    if size > max_text_bytes:
        raise BadInput("too_large", f"text is {size} bytes, limit is {max_text_bytes}")


def encode_text_record(record: TextRecord, fmt: InputFormat) -> bytes:
    """Encode a TextRecord as a producer of the ``texts`` topic would, in the given format."""
    if fmt == "protobuf":
        return record.SerializeToString()
    if fmt == "json":
        return json.dumps({"id": record.id, "text": record.text, "meta": dict(record.meta)}).encode("utf-8")
    return record.text.encode("utf-8")


def encode(topic: str, message: Message, output_format: OutputFormat = "protobuf") -> bytes:
    """A message's bytes on a logical topic: JSON for ``labels``/``rejected`` under ``output.format: json``.

    The JSON is :func:`to_json` of the message (field names as in the .proto), so a consumer needs
    only ``json.loads``; every other topic stays protobuf (only our own services read them).
    """
    if output_format == "json" and topic in JSON_OUTPUT_TOPICS:
        return json.dumps(to_json(message), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return message.SerializeToString()


def decode(topic: str, value: bytes) -> Message:
    """Parse a value of one of our logical topics (``labels``, ``hard``, ...), protobuf or JSON.

    A JSON value starts with ``{``; a protobuf message of ours never does (that byte would open a
    group on field 15, a wire type proto3 does not write), so no configuration is needed to read either.
    """
    try:
        message_type = TOPICS[topic]
    except KeyError:
        raise ValueError(f"unknown topic {topic!r}; known: {sorted(TOPICS)}") from None
    message = message_type()
    if value[:1] == b"{":
        json_format.Parse(value.decode("utf-8"), message, ignore_unknown_fields=True)
    else:
        message.ParseFromString(value)
    return message


def label_source_name(label: Label) -> str:
    """A label's source as a lower-case word: consensus, llm, human (unspecified for none)."""
    return LabelSource.Name(label.source).removeprefix("LABEL_SOURCE_").lower()


def to_json(message: Message) -> dict:
    """A protobuf message as a JSON-ready dict (field names as in the .proto, bytes as base64)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
