"""No-loss accounting over topics and over batch-job files."""

from __future__ import annotations

import json

import pytest
from autoannotator.cli import main
from autoannotator.exceptions import BadInput
from autoannotator.stream.reader import TopicReader
from autoannotator.tools.audit import Outcome, account, audit_files, audit_topics
from autoannotator.wire import Label, LabelSource, Rejection, TextRecord, decode, decode_text_record, text_sha256

from tests.helpers.kafka import send, send_texts


def test_account_finds_lost_duplicated_conflicting_and_unexpected():
    report = account(
        ["a", "b", "c", "d", "e"],
        [
            Outcome("a", "label", "positive", "consensus"),
            Outcome("a", "label", "positive", "consensus"),  # harmless duplicate
            Outcome("b", "rejected", "empty"),
            Outcome("c", "label", "negative", "llm"),
            Outcome("c", "rejected", "llm_invalid"),  # conflicting
            Outcome("zz", "label", "neutral", "llm"),  # not an input
        ],
        in_review=["e"],
    )
    assert report.lost == ["d", "e"]
    assert report.in_review == ["e"]
    assert report.duplicate_messages == 2
    assert report.conflicting == ["c"]
    assert report.unexpected == ["zz"]
    assert report.rejected_by_reason == {"empty": 1}
    assert not report.ok


def test_audit_over_topics_counts_each_outcome(make_config, kafka_bootstrap):
    config = make_config()
    send_texts(config, kafka_bootstrap, {f"x{i}": "t" for i in range(6)})
    labels = [(f"x{i}", Label(record_id=f"x{i}", label="positive",
                              source=LabelSource.LABEL_SOURCE_CONSENSUS).SerializeToString()) for i in range(4)]
    labels.append(labels[0])  # a replayed duplicate
    send(config, kafka_bootstrap, "labels", labels)
    send(config, kafka_bootstrap, "rejected", [("x4", Rejection(record_id="x4", reason="empty").SerializeToString())])
    report = audit_topics(config, kafka_bootstrap, timeout_s=10)
    assert report.inputs == 6
    assert report.labelled == 4 and report.rejected == 1
    assert report.lost == ["x5"]
    assert report.duplicate_messages == 1
    assert report.labels_by_source == {"consensus": 4}


def test_audit_uses_the_services_id_rule_for_keyless_messages(make_config, kafka_bootstrap):
    """A keyless JSON record is labelled under its body id and a keyless raw one under
    ``<full topic>:<partition>:<offset>``: audit must name them the same way (issue 18, item 2)."""
    config = make_config(input={"format": "json"})
    send(config, kafka_bootstrap, "texts", [
        (None, json.dumps({"id": "body-1", "text": "fine"}).encode()),
        (None, json.dumps({"id": "body-2", "text": "   "}).encode()),  # rejected as empty, under its body id
    ])
    with TopicReader(config.kafka, kafka_bootstrap, "texts") as reader:
        first, second = sorted(reader.read_until(2, 10), key=lambda m: m.value or b"")
    # What the specialist does with them: the ids its predictions (and so the outcomes) carry.
    assert decode_text_record(first, "json", 100).id == "body-1"
    with pytest.raises(BadInput) as empty:
        decode_text_record(second, "json", 100)
    assert (empty.value.reason, empty.value.record_id) == ("empty", "body-2")
    send(config, kafka_bootstrap, "labels",
         [("body-1", Label(record_id="body-1", label="positive").SerializeToString())])
    send(config, kafka_bootstrap, "rejected",
         [("body-2", Rejection(record_id="body-2", reason="empty").SerializeToString())])
    report = audit_topics(config, kafka_bootstrap, timeout_s=10)
    assert report.lost == [] and report.unexpected == []
    assert report.labelled == 1 and report.rejected == 1 and report.ok


def test_a_keyless_message_without_a_body_id_is_named_by_its_full_topic(make_config, kafka_bootstrap):
    config = make_config(input={"format": "text"})
    send(config, kafka_bootstrap, "texts", [(None, b"plain text")])
    with TopicReader(config.kafka, kafka_bootstrap, "texts") as reader:
        (msg,) = reader.read_until(1, 10)
    record, rid = decode("texts", msg, input_format="text", max_text_bytes=100)
    assert rid == record.id == f"{config.kafka.topic('texts')}:{msg.partition}:{msg.offset}"
    assert rid.startswith(config.kafka.topic_prefix)
    send(config, kafka_bootstrap, "labels", [(rid, Label(record_id=rid, label="neutral").SerializeToString())])
    report = audit_topics(config, kafka_bootstrap, timeout_s=10)
    assert report.lost == [] and report.unexpected == [] and report.ok


def test_audit_files_and_exit_code(tmp_path, capsys):
    data = tmp_path / "in.csv"
    data.write_text("id,text\n1,a\n2,b\n3,c\n")
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps({"id": i, "label": "neutral"}) + "\n" for i in ("1", "2")))
    rejects = tmp_path / "out.rejected.jsonl"
    rejects.write_text(json.dumps({"id": "3", "reason": "empty"}) + "\n")
    assert audit_files(data, [out, rejects]).ok
    assert main(["audit", "--input", str(data), "--output", str(out)]) == 1
    assert "lost" in capsys.readouterr().out


def test_a_second_text_under_a_decided_id_is_a_lost_message_until_it_has_its_own_outcome():
    first, second = text_sha256("first text"), text_sha256("second text")
    inputs = [("a", first), ("a", second), ("b", text_sha256("b"))]
    labelled_a = Outcome("a", "label", "positive", "consensus", text_sha256=first)
    labelled_b = Outcome("b", "label", "neutral", "consensus", text_sha256=text_sha256("b"))
    hidden = account(inputs, [labelled_a, labelled_b])
    assert hidden.lost == []  # every id was decided ...
    assert hidden.lost_messages == [f"a ({second[:12]})"]  # ... but one message was not
    assert hidden.messages == 3 and not hidden.ok
    rejected = Outcome("a", "rejected", "conflicting_duplicate", text_sha256=second)
    settled = account(inputs, [labelled_a, labelled_b, rejected])
    assert settled.ok and settled.lost_messages == [] and settled.conflicting == []
    assert (settled.labelled, settled.rejected) == (2, 1)
    assert settled.rejected_by_reason == {"conflicting_duplicate": 1}


def test_a_true_duplicate_message_needs_one_outcome():
    digest = text_sha256("same")
    labelled = Outcome("a", "label", "positive", "consensus", text_sha256=digest)
    report = account([("a", digest), ("a", digest)], [labelled])
    assert report.ok and report.messages == 2 and report.labelled == 1


def test_audit_over_topics_counts_messages_not_only_ids(make_config, kafka_bootstrap):
    config = make_config(input={"format": "text"})
    send(config, kafka_bootstrap, "texts", [("m1", b"the first text"), ("m1", b"another text")])
    label = Label(record_id="m1", label="positive", source=LabelSource.LABEL_SOURCE_CONSENSUS,
                  record=TextRecord(id="m1", text="the first text"))
    send(config, kafka_bootstrap, "labels", [("m1", label.SerializeToString())])
    report = audit_topics(config, kafka_bootstrap, timeout_s=10)
    assert report.lost == [] and report.messages == 2
    assert report.lost_messages == [f"m1 ({text_sha256('another text')[:12]})"]
    assert not report.ok


def test_audit_files_counts_each_text_of_a_reused_id(tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("id,text\n1,a\n1,b\n2,c\n")
    out = tmp_path / "out.jsonl"
    out.write_text("".join(json.dumps({"id": i, "text": t, "label": "neutral"}) + "\n" for i, t in (("1", "a"),
                                                                                                     ("2", "c"))))
    assert not audit_files(data, [out]).ok
    rejects = tmp_path / "out.rejected.jsonl"
    rejects.write_text(json.dumps({"id": "1", "text": "b", "reason": "conflicting_duplicate"}) + "\n")
    assert audit_files(data, [out, rejects]).ok
