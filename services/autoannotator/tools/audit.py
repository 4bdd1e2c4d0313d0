"""No-loss accounting: every input message must end in exactly one label or one rejection.

``audit`` compares the input (a topic, or a CSV/JSONL file) with what came out on ``labels`` ∪
``rejected`` (or in annotate's output files) and reports lost ids, lost messages, duplicated
outcomes (at-least-once delivery makes them possible and harmless when they agree), conflicting
outcomes (one message both labelled and rejected, or labelled differently), ids still in
review, and rejections by reason.

A message is an id and a text: ``(record id, SHA-256 of the text)``. Counting messages, not
only ids, means a second text sent under an id that was decided cannot hide behind that id: it
must have an outcome of its own (the voter rejects it as ``conflicting_duplicate``). An input
or outcome that carries no text hash (older producers) matches any message of its id.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import BadInput
from autoannotator.stream.reader import TopicReader
from autoannotator.tools.producer import read_rows
from autoannotator.wire import RawMessage, decode, label_source_name, message_text_sha256, text_sha256

#: One input message: (record id, text hash); "" as the hash matches any text of the id.
MessageKey = tuple[str, str]


@dataclass
class AuditReport:
    """What came out for what went in."""

    inputs: int = 0  # distinct ids
    messages: int = 0  # input messages, duplicates included
    labelled: int = 0  # distinct messages (id, text) labelled
    rejected: int = 0
    lost: list[str] = field(default_factory=list)
    # "id (sha256 prefix)" of each distinct input message with no outcome of its own
    lost_messages: list[str] = field(default_factory=list)
    in_review: list[str] = field(default_factory=list)
    duplicate_messages: int = 0
    conflicting: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    labels_by_source: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no id and no message was lost and none has conflicting outcomes."""
        return not self.lost and not self.lost_messages and not self.conflicting

    def to_json(self) -> dict:
        """A JSON-ready summary (id lists truncated to 20)."""
        return {
            "inputs": self.inputs,
            "labelled": self.labelled,
            "rejected": self.rejected,
            "lost": len(self.lost),
            "lost_ids": self.lost[:20],
            "messages": self.messages,
            "lost_messages": len(self.lost_messages),
            "lost_message_keys": self.lost_messages[:20],
            "in_review": len(self.in_review),
            "duplicate_messages": self.duplicate_messages,
            "conflicting": len(self.conflicting),
            "conflicting_ids": self.conflicting[:20],
            "unexpected_outcomes": len(self.unexpected),
            "rejected_by_reason": self.rejected_by_reason,
            "labels_by_source": self.labels_by_source,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Outcome:
    """One outcome message about a record."""

    record_id: str
    kind: str  # "label" | "rejected"
    value: str  # the label, or the rejection reason
    source: str = ""
    revision: int = 0  # a correction is a later label with a higher revision: the highest wins
    text_sha256: str = ""  # of the text it decided ("" when unknown: matches any text of the id)


def _latest(outcomes: list[Outcome]) -> list[Outcome]:
    """The outcomes of the highest revision among ``outcomes`` (a correction supersedes)."""
    top = max(o.revision for o in outcomes)
    return [o for o in outcomes if o.revision == top]


def account(inputs: Iterable[str | MessageKey], outcomes: Iterable[Outcome],
            in_review: Iterable[str] = ()) -> AuditReport:
    """Compare input messages (ids, or ``(id, text hash)`` pairs) with outcomes."""
    keys = [m if isinstance(m, tuple) else (m, "") for m in inputs]
    messages = list(dict.fromkeys(keys))
    ids = list(dict.fromkeys(rid for rid, _ in messages))
    wanted = set(ids)
    by_id: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_id[outcome.record_id].append(outcome)
    report = AuditReport(inputs=len(ids), messages=len(keys))
    reasons: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    for rid in ids:
        got = by_id.get(rid, [])
        if not got:
            report.lost.append(rid)
            continue
        # Outcomes agree or conflict per text: a label for the first text and a
        # conflicting_duplicate rejection for a second one are two messages' outcomes. Within
        # one text, only the highest revision counts (a correction is not a conflict).
        per_text: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in got:
            per_text[outcome.text_sha256].append(outcome)
        report.duplicate_messages += sum(len(same) - 1 for same in per_text.values())
        if any(len({(o.kind, o.value) for o in _latest(same)}) > 1 for same in per_text.values()):
            report.conflicting.append(rid)
    for rid, digest in messages:
        got = by_id.get(rid, [])
        if not got:
            continue  # counted as a lost id
        mine = [o for o in got if not digest or not o.text_sha256 or o.text_sha256 == digest]
        if not mine:
            report.lost_messages.append(f"{rid} ({digest[:12]})")
            continue
        first = _latest(mine)[0]
        if first.kind == "label":
            report.labelled += 1
            sources[first.source] += 1
        else:
            report.rejected += 1
            reasons[first.value] += 1
    review = set(in_review)
    report.in_review = [rid for rid in report.lost if rid in review]
    report.unexpected = sorted(set(by_id) - wanted)
    report.rejected_by_reason = dict(reasons.most_common())
    report.labels_by_source = dict(sources.most_common())
    return report


def outcomes_from_topics(config: PipelineConfig, bootstrap: str, timeout_s: float = 30) -> list[Outcome]:
    """Every outcome currently on ``labels`` and ``rejected``."""
    out: list[Outcome] = []
    with TopicReader(config.kafka, bootstrap, "labels") as reader:
        for msg in reader.drain(timeout_s):
            label, rid = decode("labels", msg)
            digest = text_sha256(label.record.text) if label.HasField("record") else ""
            out.append(Outcome(rid, "label", label.label, label_source_name(label), label.revision, digest))
    with TopicReader(config.kafka, bootstrap, "rejected") as reader:
        for msg in reader.drain(timeout_s):
            rejection, rid = decode("rejected", msg)
            digest = rejection.text_sha256 or (text_sha256(rejection.record.text)
                                               if rejection.HasField("record") else "")
            out.append(Outcome(rid, "rejected", rejection.reason, text_sha256=digest))
    return out


def message_id(config: PipelineConfig, topic: str, msg: RawMessage) -> str:
    """The record id of one message by the services' own rule (:func:`autoannotator.wire.decode`).

    A message the services would reject still has the id they reject it under.
    """
    try:
        return decode(topic, msg, input_format=config.input.format, max_text_bytes=config.input.max_text_bytes)[1]
    except BadInput as exc:
        return exc.record_id or msg.record_id


def ids_from_topic(config: PipelineConfig, bootstrap: str, topic: str, timeout_s: float = 30) -> list[str]:
    """Record ids of every message on a topic, by the id rule (key, else body id, else coordinates)."""
    with TopicReader(config.kafka, bootstrap, topic) as reader:
        return [message_id(config, topic, msg) for msg in reader.drain(timeout_s)]


def messages_from_topic(config: PipelineConfig, bootstrap: str, topic: str = "texts",
                        timeout_s: float = 30) -> list[MessageKey]:
    """(record id, text hash) of every message on an input topic, hashed as the specialists do."""
    fmt, limit = config.input.format, config.input.max_text_bytes
    with TopicReader(config.kafka, bootstrap, topic) as reader:
        return [(message_id(config, topic, msg), message_text_sha256(msg, fmt, limit))
                for msg in reader.drain(timeout_s)]


def audit_topics(config: PipelineConfig, bootstrap: str, input_topic: str = "texts",
                 timeout_s: float = 30) -> AuditReport:
    """Audit a run on Kafka: messages of ``input_topic`` vs ``labels`` ∪ ``rejected`` (``hard`` = in review)."""
    inputs = messages_from_topic(config, bootstrap, input_topic, timeout_s)
    hard = ids_from_topic(config, bootstrap, "hard", timeout_s)
    return account(inputs, outcomes_from_topics(config, bootstrap, timeout_s), hard)


def outcomes_from_files(paths: Iterable[Path]) -> list[Outcome]:
    """Outcomes from ``annotate`` output files (JSONL with id + label, or id + reason)."""
    out: list[Outcome] = []
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                doc = json.loads(line)
                text = doc.get("text")
                digest = text_sha256(text) if isinstance(text, str) else ""
                if "label" in doc:
                    out.append(Outcome(str(doc["id"]), "label", doc["label"], doc.get("source", ""),
                                       text_sha256=digest))
                else:
                    out.append(Outcome(str(doc["id"]), "rejected", doc.get("reason", ""), text_sha256=digest))
    return out


def audit_files(input_path: Path, output_paths: Iterable[Path], *, id_column: str = "id",
                text_column: str = "text") -> AuditReport:
    """Audit a batch job: the input file's messages (id, text) vs those in its output files."""
    inputs = [(row.id, text_sha256(row.text))
              for row in read_rows(input_path, id_column=id_column, text_column=text_column)]
    return account(inputs, outcomes_from_files(output_paths))


def format_report(report: AuditReport) -> str:
    """A human-readable table of the report."""
    lines = [
        f"{'inputs':<22}{report.inputs:>10}",
        f"{'labelled':<22}{report.labelled:>10}",
        f"{'rejected':<22}{report.rejected:>10}",
        f"{'lost':<22}{len(report.lost):>10}",
        f"{'  of which in review':<22}{len(report.in_review):>10}",
        f"{'input messages':<22}{report.messages:>10}",
        f"{'lost messages':<22}{len(report.lost_messages):>10}",
        f"{'duplicate messages':<22}{report.duplicate_messages:>10}",
        f"{'conflicting ids':<22}{len(report.conflicting):>10}",
    ]
    for source, n in report.labels_by_source.items():
        lines.append(f"{'  label source ' + source:<22}{n:>10}")
    for reason, n in report.rejected_by_reason.items():
        lines.append(f"{'  rejected ' + reason:<22}{n:>10}")
    if report.lost:
        lines.append("lost ids (first 10): " + ", ".join(report.lost[:10]))
    if report.lost_messages:
        lines.append("lost messages, id (text sha256) (first 10): " + ", ".join(report.lost_messages[:10]))
    lines.append("RESULT " + ("ok" if report.ok else "FAILED") + f" lost={len(report.lost)} "
                 f"lost_messages={len(report.lost_messages)} "
                 f"duplicates={report.duplicate_messages} conflicting={len(report.conflicting)}")
    return "\n".join(lines)
