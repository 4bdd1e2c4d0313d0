"""The trainer's durable pool: de-duplication, the held-out split, rounds owed, the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from autoannotator.exceptions import BadInput
from autoannotator.trainer.pool import FAILED, PROMOTED, REJECTED, SamplePool, is_holdout
from autoannotator.trainer.service import parse_reviewed
from autoannotator.wire import LabelSource, PredictionStatus, RawMessage, ReviewedSample, TextRecord

LABELS = ["negative", "neutral", "positive"]


def reviewed(i: int, label: str | None = None) -> ReviewedSample:
    """A reviewed sample with a deterministic id, text and label."""
    rid = f"rec-{i}"
    return ReviewedSample(
        record_id=rid,
        record=TextRecord(id=rid, text=f"text number {i}"),
        label=label or LABELS[i % 3],
        source=LabelSource.LABEL_SOURCE_LLM,
    )


def test_a_replayed_sample_is_stored_once(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2)
    assert pool.add([reviewed(i) for i in range(10)]) == 10
    assert pool.add([reviewed(i) for i in range(5, 15)]) == 5
    assert pool.size() == 15


def test_the_pool_survives_reopening(tmp_path: Path) -> None:
    SamplePool(tmp_path / "pool.sqlite", 0.2).add([reviewed(i) for i in range(7)])
    assert SamplePool(tmp_path / "pool.sqlite", 0.2).size() == 7


def test_the_held_out_split_is_a_stable_hash_of_the_record_id(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.25)
    pool.add([reviewed(i) for i in range(400)])
    expected = sum(is_holdout(f"rec-{i}", 0.25) for i in range(400))
    assert pool.counts()["holdout"] == expected
    assert 60 < expected < 140  # about a quarter
    assert [is_holdout(f"rec-{i}", 0.25) for i in range(50)] == [is_holdout(f"rec-{i}", 0.25) for i in range(50)]


def test_audit_samples_are_held_out_at_their_own_share_by_the_same_hash(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2, audit_holdout_fraction=0.5)
    samples = [reviewed(i) for i in range(1000)]
    for i, sample in enumerate(samples[:800]):
        sample.predictions.add(record_id=sample.record_id, specialist="s1", model_version="v0001",
                               status=PredictionStatus.PREDICTION_STATUS_OK if i % 2 == 0 else
                               PredictionStatus.PREDICTION_STATUS_NO_MODEL)
        sample.audit = True
    pool.add(samples)
    held = {s.record_id for s in pool._samples("holdout = 1", ())}
    # Audit samples a model voted on are held out at 0.5; the rest (no model voted: a cold start) at 0.2.
    audit_ids = {s.record_id for s in samples[:800:2]}
    assert held & audit_ids == {rid for rid in audit_ids if is_holdout(rid, 0.5)}
    assert held - audit_ids == {s.record_id for s in samples
                                if s.record_id not in audit_ids and is_holdout(s.record_id, 0.2)}
    assert 150 < len(held & audit_ids) < 250 and 80 < len(held - audit_ids) < 160  # about half, about a fifth
    assert pool.audit_counts()["holdout"] == len(held & {s.record_id for s in samples[:800]})


def test_held_out_samples_are_never_trained_on(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.3)
    pool.add([reviewed(i) for i in range(60)])
    data = pool.round_data("s1", replay_fraction=0.5, seed=0)
    held = {s.record_id for s in data.holdout}
    assert held and not held & {s.record_id for s in data.new + data.replay}
    assert all(is_holdout(rid, 0.3) for rid in held)


def test_a_round_is_owed_every_beta_samples(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2)
    pool.add([reviewed(i) for i in range(9)])
    assert not pool.owed("s1", beta=10)
    pool.add([reviewed(9)])
    assert pool.owed("s1", beta=10)
    round_id = pool.begin_round("s1", pool.round_data("s1", 0.5, 0), "v1")
    pool.finish_round(round_id, REJECTED)
    assert not pool.owed("s1", beta=10)
    assert pool.owed("s2", beta=10)  # owed per specialist


def test_an_interrupted_round_is_owed_again(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2)
    pool.add([reviewed(i) for i in range(10)])
    pool.begin_round("s1", pool.round_data("s1", 0.5, 0), "v1")  # the process dies here
    reopened = SamplePool(tmp_path / "pool.sqlite", 0.2)
    assert reopened.interrupt_running() == 1
    assert reopened.owed("s1", beta=10)
    assert reopened.rounds("s1")[0].status == "interrupted"


def test_replay_draws_only_from_samples_of_completed_rounds(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2)
    pool.add([reviewed(i) for i in range(40)])
    first = pool.round_data("s1", 0.5, 0)
    assert first.replay == []  # nothing older yet
    pool.finish_round(pool.begin_round("s1", first, "v1"), PROMOTED, version="v2")
    pool.add([reviewed(i) for i in range(40, 60)])
    second = pool.round_data("s1", 0.5, 0)
    assert {s.seq for s in second.new} == {s.seq for s in pool._samples("holdout = 0 AND seq > 40", ())}
    assert len(second.replay) == round(0.5 * len(second.new))
    assert all(s.seq <= first.upto_seq for s in second.replay)


def test_a_failed_round_consumes_no_samples(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2)
    pool.add([reviewed(i) for i in range(20)])
    data = pool.round_data("s1", 0.5, 0)
    pool.finish_round(pool.begin_round("s1", data, "v1"), FAILED, error="FineTuneError: boom")
    pool.add([reviewed(i) for i in range(20, 30)])
    retry = pool.round_data("s1", 0.5, 0)
    assert retry.from_seq == 0 and len(retry.new) > len(data.new)
    assert pool.rounds("s1")[0].error == "FineTuneError: boom"


def test_the_ledger_records_which_samples_a_round_used(tmp_path: Path) -> None:
    pool = SamplePool(tmp_path / "pool.sqlite", 0.2)
    pool.add([reviewed(i) for i in range(30)])
    data = pool.round_data("s1", 0.5, 0)
    round_id = pool.begin_round("s1", data, "v1")
    pool.finish_round(round_id, PROMOTED, candidate_accuracy=0.9, current_accuracy=0.8, version="v2",
                      metrics={"steps": 3.0})
    assert pool.round_samples(round_id, "new") == [s.seq for s in data.new]
    assert pool.round_samples(round_id, "holdout") == [s.seq for s in data.holdout]
    row = pool.rounds("s1")[0]
    assert (row.status, row.version, row.candidate_accuracy, row.metrics) == (PROMOTED, "v2", 0.9, {"steps": 3.0})


def test_a_reviewed_message_that_cannot_be_trained_on_is_refused_with_its_reason() -> None:
    def raw(key: str, value: bytes) -> RawMessage:
        return RawMessage("reviewed", 0, 0, key.encode(), value, 0)

    with pytest.raises(BadInput) as unknown:
        parse_reviewed(raw("x", reviewed(1, label="angry").SerializeToString()), LABELS)
    with pytest.raises(BadInput) as garbage:
        parse_reviewed(raw("y", b"\xff\xff\xff"), LABELS)
    assert (unknown.value.reason, garbage.value.reason) == ("unknown_label", "undecodable")
    assert parse_reviewed(raw("rec-1", reviewed(1).SerializeToString()), LABELS).label == "neutral"
