"""`autoannotator annotate`: a file in, labels out, through the streaming pipeline on an embedded broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from autoannotator.artifacts.store import ModelStore
from autoannotator.tools.audit import audit_files
from autoannotator.wire import text_sha256

REPO = Path(__file__).resolve().parents[2]

ROWS = [
    ("a1", "I love this airline, great crew", "positive"),
    ("a2", "worst flight ever, rude and late", "negative"),
    ("a3", "the gate is B12", "neutral"),
    ("a4", "fantastic, thank you so much", "positive"),
    ("a5", "   ", "neutral"),  # whitespace only: rejected with a reason, never labelled
]


def _pipeline(tmp_path: Path, artifact: Path) -> Path:
    store = ModelStore(f"file://{tmp_path / 'store'}")
    for name in ("s1", "s2"):
        store.set_current(name, store.publish(name, artifact).version)
    doc = {
        "task": {"name": "t", "labels": ["negative", "neutral", "positive"]},
        # No bootstrap: annotate starts an embedded broker and the services for this job.
        "kafka": {"partitions": 2, "session_timeout_ms": 3000},
        "store": {"uri": store.uri},
        "specialists": [{"name": "s1", "threads": 1}, {"name": "s2", "threads": 1}],
        # Only unanimous and confident records are accepted; the rest goes to the (simulated) LLM.
        "voter": {"policy": "soft", "tau": 0.9, "quorum": 2, "join_timeout_s": 20},
        "reviewer": {"llm": {"batch_size": 5}, "cache_path": str(tmp_path / "cache.sqlite")},
        "trainer": {"enabled": False},
        "data_dir": str(tmp_path / "data"),
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_annotate_labels_a_csv_and_writes_rejects_beside_the_output(tmp_path, tiny_artifact):
    config = _pipeline(tmp_path, tiny_artifact)
    data = tmp_path / "in.csv"
    data.write_text("id,text\n" + "".join(f'{rid},"{text}"\n' for rid, text, _ in ROWS))
    gold = tmp_path / "gold.csv"
    gold.write_text("id,label\n" + "".join(f"{rid},{label}\n" for rid, _, label in ROWS))
    out = tmp_path / "out" / "labels.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "autoannotator.cli", "--log-level", "WARNING", "annotate", str(data), "--out", str(out),
         "--config", str(config), "--mock-llm-gold", str(gold), "--data-dir", str(tmp_path / "jobs"),
         "--no-progress", "--timeout", "180"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # 1: some record was rejected
    assert "SIMULATED" in result.stdout
    labelled = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in labelled] == ["a1", "a2", "a3", "a4"]
    for row in labelled:
        assert row["label"] in ("negative", "neutral", "positive")
        assert row["source"] in ("consensus", "llm")
        assert set(row) >= {"id", "text", "label", "confidence", "source", "model_versions", "cost"}
        if row["source"] == "llm":
            assert row["label"] == dict((r, lab) for r, _, lab in ROWS)[row["id"]]
            assert row["cost"]["prompt_tokens"] > 0
    rejects = [json.loads(line) for line in (out.parent / "labels.rejected.jsonl").read_text().splitlines()]
    assert rejects == [{"id": "a5", "text": "   ", "reason": "empty"}]
    assert audit_files(data, [out, out.parent / "labels.rejected.jsonl"]).ok


def test_an_id_reused_with_another_text_rejects_the_second_text_and_audit_finds_no_lost_message(
    tmp_path, tiny_artifact
):
    config = _pipeline(tmp_path, tiny_artifact)
    rows = [("d1", "I love this airline, great crew"), ("d2", "the gate is B12"),
            ("d1", "worst flight ever, rude and late"),  # same id, another text
            ("d2", "the gate is B12")]  # same id, same text: a harmless duplicate
    data = tmp_path / "in.csv"
    data.write_text("id,text\n" + "".join(f'{rid},"{text}"\n' for rid, text in rows))
    gold = tmp_path / "gold.csv"
    gold.write_text("id,label\nd1,positive\nd2,neutral\n")
    out = tmp_path / "out" / "labels.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "autoannotator.cli", "--log-level", "WARNING", "annotate", str(data), "--out", str(out),
         "--config", str(config), "--mock-llm-gold", str(gold), "--data-dir", str(tmp_path / "jobs"),
         "--no-progress", "--timeout", "180"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    labelled = {(row["id"], row["text"]) for row in map(json.loads, out.read_text().splitlines())}
    [reject] = [json.loads(line) for line in (out.parent / "labels.rejected.jsonl").read_text().splitlines()]
    # The text whose predictions reach the voter first keeps the id (specialists batch by length,
    # so it need not be the first row); the other is rejected, never labelled, never dropped.
    assert (reject["id"], reject["reason"]) == ("d1", "conflicting_duplicate")
    kept = rows[0][1] if reject["text"] == rows[2][1] else rows[2][1]
    assert labelled == {("d1", kept), ("d2", rows[1][1])}
    assert text_sha256(rows[0][1]) in reject["detail"] and text_sha256(rows[2][1]) in reject["detail"]
    report = audit_files(data, [out, out.parent / "labels.rejected.jsonl"])
    assert report.ok and report.lost_messages == [] and report.messages == 4
