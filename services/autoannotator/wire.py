"""Bytes <-> objects for every topic: the one place that knows the wire formats.

Our own topics carry the protobuf messages of ``proto/autoannotator/v1/records.proto``. The
``texts`` topic also accepts JSON (``{"id": ..., "text": ..., "meta": {...}}``) or raw UTF-8,
chosen per message by its ``content-type`` Kafka header (:data:`CONTENT_TYPES`), else by
``input.format``. :func:`decode` turns a consumed message of any topic into ``(record, id)`` and
:func:`encode` a record into bytes; no service parses or imports protobuf itself. The ``labels``
and ``rejected`` topics are protobuf or, with ``output.format: json``, JSON objects; :func:`decode`
reads either.

**The id rule** (one rule for every service and for ``audit``): a message's record id is

1. its key, when it has one (the key decides the partition, so it wins over any body id);
2. else the id in its body (``TextRecord.id``, a JSON ``"id"``, ``record_id`` of our messages);
3. else ``<full topic name>:<partition>:<offset>`` (the prefixed topic, as the broker names it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from autoannotator.exceptions import BadInput
from autoannotator.v1.records_pb2 import (
    Cost,
    HardSample,
    HeldOutPrediction,
    Label,
    LabelSource,
    ModelRelease,
    Prediction,
    PredictionStatus,
    Rejection,
    ReviewedSample,
    Spend,
    TextRecord,
    Vote,
)

__all__ = [
    "RELEASES_TOPIC",
    "SPEND_TOPIC",
    "TOPICS",
    "Cost",
    "DecodeError",
    "HardSample",
    "HeldOutPrediction",
    "Label",
    "LabelSource",
    "ModelRelease",
    "Prediction",
    "PredictionStatus",
    "RawMessage",
    "Rejection",
    "ReviewedSample",
    "Spend",
    "TextRecord",
    "Vote",
    "argmax",
    "check_probs",
    "decode",
    "decode_text_record",
    "encode",
    "encode_text_record",
    "input_format",
    "label_source_name",
    "message_text_sha256",
    "now_ms",
    "prediction_text_sha256",
    "record_id",
    "text_sha256",
    "to_json",
    "votes",
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

# The broadcast topic of model versions, keyed by specialist name (every other topic is keyed by record id).
RELEASES_TOPIC = "model-releases"
# Every reviewer replica's LLM spend, keyed by replica and time bucket; compacted (reviewer/spend.py).
SPEND_TOPIC = "spend"

# Logical topic name -> message type of its values.
TOPICS: dict[str, type[Message]] = {
    "texts": TextRecord,
    "predictions": Prediction,
    "labels": Label,
    "hard": HardSample,
    "reviewed": ReviewedSample,
    "rejected": Rejection,
    RELEASES_TOPIC: ModelRelease,
    SPEND_TOPIC: Spend,
}


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def record_id(key: bytes | None, topic: str, partition: int, offset: int) -> str:
    """The id a message has before its body is read: its key, or ``<topic>:<partition>:<offset>``.

    ``topic`` is the full (prefixed) topic name. A body id, when there is one, comes between the
    two: :func:`decode` applies the whole rule.
    """
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
    # The topic as the broker names it (with the configured prefix); ``topic`` is the logical name.
    full_topic: str = ""
    # Kafka headers as (name, value) pairs; ``content-type`` chooses the input format of a ``texts`` message.
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def record_id(self) -> str:
        """The id before the body is read: the key, or ``<full topic>:<partition>:<offset>``.

        Use :func:`decode` for a message whose body may carry an id (the whole id rule).
        """
        return record_id(self.key, self.full_topic or self.topic, self.partition, self.offset)


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
    wrong shape), ``empty`` (no text after stripping whitespace, an empty message or a tombstone),
    ``too_large`` (over the limit). The record's ``id`` follows the id rule; a :class:`BadInput`
    carries the id as far as the body could be read (``record_id``), so a rejection and ``audit``
    name the same id.
    """
    rid = msg.record_id
    record = TextRecord(id=rid)
    try:
        record = _parse_text_record(msg, fmt, max_text_bytes)
        _check_text(record.text, max_text_bytes)
    except BadInput as exc:
        exc.record_id = record.id
        raise
    return record


def _parse_text_record(msg: RawMessage, fmt: InputFormat, max_text_bytes: int) -> TextRecord:
    if not msg.value:
        # Nothing to parse: in JSON an empty value would read as undecodable, which it is not.
        what = "a tombstone (null value)" if msg.value is None else "a message with no bytes"
        raise BadInput("empty", f"{what}: there is no text to label")
    fmt = input_format(msg, fmt)
    value = msg.value
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
        raise BadInput("empty", "text is empty or whitespace only", text=text)
    size = len(text.encode("utf-8"))
    if size > max_text_bytes:
        raise BadInput("too_large", f"text is {size} bytes, limit is {max_text_bytes}", text=text)


def text_sha256(text: str | bytes) -> str:
    """Hex SHA-256 of a text (UTF-8) or of raw bytes: with the id, the identity of one message."""
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def message_text_sha256(msg: RawMessage, fmt: InputFormat, max_text_bytes: int) -> str:
    """The text hash of one ``texts`` message, exactly as the specialists put it in predictions.

    The decoded text's hash; for input whose text cannot be read (undecodable, wrong schema),
    the hash of the raw bytes.
    """
    try:
        return text_sha256(decode_text_record(msg, fmt, max_text_bytes).text)
    except BadInput as exc:
        return text_sha256(exc.text if exc.text is not None else msg.value or b"")


def prediction_text_sha256(prediction: Prediction) -> str:
    """The text hash a prediction is about ("" when it carries neither hash nor text)."""
    if prediction.text_sha256:
        return prediction.text_sha256
    if prediction.HasField("record"):
        return text_sha256(prediction.record.text)
    return ""


def encode_text_record(record: TextRecord, fmt: InputFormat) -> bytes:
    """Encode a TextRecord as a producer of the ``texts`` topic would, in the given format."""
    if fmt == "protobuf":
        return record.SerializeToString()
    if fmt == "json":
        return json.dumps({"id": record.id, "text": record.text, "meta": dict(record.meta)}).encode("utf-8")
    return record.text.encode("utf-8")


# Field of each message type that carries the id of what the message is about.
_ID_FIELD: dict[type[Message], str | None] = {TextRecord: "id", ModelRelease: "specialist", Spend: None}


def decode(topic: str, message: RawMessage, *, input_format: InputFormat = "protobuf",
           max_text_bytes: int = 1 << 20) -> tuple[Message, str]:
    """``(record, id)`` for one consumed message of a logical topic (``texts``, ``labels``, ...).

    The id follows the module's id rule and is also written into the record's id field, so code
    downstream sees one id. ``texts`` is read in ``input_format`` (or its ``content-type`` header)
    and checked against ``max_text_bytes``; every other topic is our protobuf, or its JSON (see
    :func:`encode`). Raises :class:`BadInput` (``reason`` ``undecodable``, or a ``texts`` reason)
    whose ``record_id`` is the id as far as it is known.
    """
    if topic == "texts":
        record = decode_text_record(message, input_format, max_text_bytes)
        return record, record.id
    try:
        message_type = TOPICS[topic]
    except KeyError:
        raise ValueError(f"unknown topic {topic!r}; known: {sorted(TOPICS)}") from None
    record = message_type()
    value = message.value or b""
    try:
        # A JSON value (output.format: json) starts with "{"; a protobuf message of ours never does
        # (that byte would open a group on field 15, a wire type proto3 does not write).
        if value[:1] == b"{":
            json_format.Parse(value.decode("utf-8"), record, ignore_unknown_fields=True)
        else:
            record.ParseFromString(value)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise BadInput("undecodable", f"not a {message_type.__name__}: {exc}", message.record_id) from None
    field = _ID_FIELD.get(message_type, "record_id")
    if field is None:  # keyed by something other than a record (a spend entry): the id rule's key or position
        return record, message.record_id
    rid = message.record_id if message.key or not getattr(record, field) else getattr(record, field)
    setattr(record, field, rid)
    return record, rid


def encode(record: Message, *, topic: str = "", output_format: OutputFormat = "protobuf") -> bytes:
    """The bytes of one of our records as every service produces them (protobuf).

    Under ``output.format: json`` the ``labels`` and ``rejected`` topics (``topic``) get
    :func:`to_json` of the record instead (field names as in the .proto), so an outside consumer
    needs only ``json.loads``; every other topic stays protobuf (only our own services read them).
    """
    if output_format == "json" and topic in JSON_OUTPUT_TOPICS:
        return json.dumps(to_json(record), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return record.SerializeToString()


def argmax(values: list[float]) -> int:
    """Index of the largest value (the first one on an exact tie)."""
    return values.index(max(values))  # two C calls: faster than a Python loop for short vectors


# A probability vector may sum to 1 within this (float32 rounding in the specialists).
_SUM_TOLERANCE = 1e-3


def check_probs(prediction: Prediction, labels: Sequence[str]) -> tuple[list[float] | None, str]:
    """The prediction's probabilities in task-label order, or ``(None, why)`` when unusable.

    A prediction that names its labels in another order is re-ordered by name; one that names
    other labels, has the wrong length, or is not a probability vector is unusable.
    """
    labels = list(labels)
    probs = list(prediction.probs)
    if prediction.labels and prediction.labels != labels:
        named = list(prediction.labels)
        if sorted(named) != sorted(labels) or len(named) != len(probs):
            return None, f"labels {named} are not the task labels {list(labels)}"
        by_name = dict(zip(named, probs, strict=True))
        probs = [by_name[label] for label in labels]
    if len(probs) != len(labels):
        return None, f"{len(probs)} probabilities for {len(labels)} labels"
    total = sum(probs)
    # `not <=` also catches NaN and infinities, which propagate into the sum.
    if not abs(total - 1.0) <= _SUM_TOLERANCE:
        return None, f"probabilities sum to {total:.4f}, not 1"
    if min(probs) < 0.0:
        return None, "negative probabilities"
    return probs, ""


def votes(predictions: Iterable[Prediction], labels: Sequence[str],
          vectors: Sequence[Sequence[float]] | None = None) -> tuple[list[Vote], dict[str, str]]:
    """The votes a Label records, and the model version of each specialist that voted.

    One vote per usable prediction (status OK, probabilities that :func:`check_probs` accepts):
    its top task label and that label's probability. ``vectors``, when given, are the
    predictions' already-checked task-order probabilities (the voter has them at hand).
    """
    out: list[Vote] = []
    versions: dict[str, str] = {}
    predictions = list(predictions)
    if vectors is None:
        checked = [(p, check_probs(p, labels)[0]) for p in predictions
                   if p.status == PredictionStatus.PREDICTION_STATUS_OK]
        pairs = [(p, v) for p, v in checked if v is not None]
    else:
        pairs = list(zip(predictions, vectors, strict=True))
    for prediction, vector in pairs:
        top = argmax(list(vector))
        out.append(Vote(specialist=prediction.specialist, model_version=prediction.model_version,
                        label=labels[top], confidence=vector[top]))
        versions[prediction.specialist] = prediction.model_version
    return out, versions




def label_source_name(label: Label) -> str:
    """A label's source as a lower-case word: consensus, llm, human (unspecified for none)."""
    return LabelSource.Name(label.source).removeprefix("LABEL_SOURCE_").lower()


def to_json(message: Message) -> dict:
    """A protobuf message as a JSON-ready dict (field names as in the .proto, bytes as base64)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
