"""The paper-table harness, quick: every row a run of the real pipeline on a tiny slice.

Real embedded broker, three tiny ONNX specialists served by the specialist services, the voter
configured per method, the reviewer calling mock-llm over HTTP (a child process), labels read back
from the ``labels`` topic. Nothing is estimated: the LLM-alone row is a run in which every record
reaches the reviewer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from autoannotator.artifacts.store import ModelStore
from autoannotator.demo.datasets import Example
from autoannotator.demo.harness import ReviewerSetting, Stage, base_methods, evaluate, parse_sweep
from autoannotator.demo.paper import chart, markdown, summary_line

from tests.helpers.tiny_model import CORPUS, build_tiny_artifact, build_tiny_hf_model

LABELS = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_artifact) -> ModelStore:
    """Three specialists: two serving the shared tiny model, one another seed (so they sometimes disagree)."""
    root = tmp_path_factory.mktemp("harness")
    other = build_tiny_artifact(root / "artifact", model_dir=build_tiny_hf_model(root / "model", seed=7,
                                                                                  train_steps=5))
    store = ModelStore(f"file://{root / 'store'}")
    for name, artifact in (("s1", tiny_artifact), ("s2", tiny_artifact), ("s3", other)):
        store.set_current(name, store.publish(name, artifact).version)
    return store


def _stream() -> list[Example]:
    return [Example(f"t{i:03d}", text, label, "tiny") for i, (text, label) in enumerate(CORPUS[:18])]


def test_quick_harness_runs_every_row_through_the_pipeline_and_the_llm_alone_row_reviews_everything(
        store: ModelStore, kafka_bootstrap: str, tmp_path: Path) -> None:
    stream = _stream()
    stage = Stage("tiny", {"name": "tiny", "description": "Sentiment of short sentences.", "labels": LABELS},
                  ["s1", "s2", "s3"], store.uri, stream, tmp_path, kafka_bootstrap, max_length=32,
                  latency_ms=0.0, batch_size=4, concurrency=2, timeout_s=240, progress=False)
    stage.difficulty = {e.id: i / len(stream) for i, e in enumerate(stream)}
    methods = base_methods(eps=0.3, target_error=0.1, audit_rate=0.1)
    rows = evaluate(stage, [], [ReviewerSetting(1.0), ReviewerSetting(0.5, "difficulty")], methods,
                    ["vote", "llm"], log=lambda _: None)

    by = {(r.method, r.reviewer): r for r in rows}
    llm, llm_half = by[("llm", "1.00")], by[("llm", "0.50-hard")]
    vote = by[("vote", "1.00")]
    assert {("slm:s1", "-"), ("slm:s2", "-"), ("slm:s3", "-")} <= set(by)
    for row in rows:
        assert row.decided == len(stream) and row.wall_s > 0  # measured, every record decided
    # LLM alone: every record went to the reviewer over HTTP, in batches of 4.
    assert llm.share == 1.0 and llm.llm_calls >= len(stream) / 4 and llm.tokens > 0 and llm.cost_usd > 0
    assert llm.accuracy == 1.0  # a perfect reviewer labelled everything
    assert llm_half.accuracy == pytest.approx(0.5, abs=1 / len(stream))  # difficulty mode: exactly 9 of 18 wrong
    # Vote: only what the specialists disagree on is reviewed; the rest costs nothing.
    assert 0 <= vote.share < 1 and vote.llm_calls < llm.llm_calls
    assert by[("vote", "0.50-hard")].share == vote.share  # routing does not depend on the reviewer

    table = markdown(rows)
    assert "| 1.00 | LLM alone (every record reviewed) | 1.000 | - | 100.0% |" in table
    line = summary_line("tiny", rows)
    fields = dict(part.split("=", 1) for part in line.split()[2:])
    assert line.startswith("RESULT paper_tiny pipeline=1 ")
    assert int(fields["llm_alone_calls"]) == llm.llm_calls > 0
    assert fields["best_method"] == "vote@1.00" and float(fields["llm_alone_acc"]) == 1.0
    assert chart("tiny", rows, tmp_path / "chart.png").stat().st_size > 0


def test_reviewer_sweep_is_parsed_with_the_difficulty_suffix() -> None:
    sweep = parse_sweep("0.70,0.80,0.92,0.92-hard")
    assert [s.key for s in sweep] == ["0.70", "0.80", "0.92", "0.92-hard"]
    assert sweep[-1].error_mode == "difficulty"


def test_error_bounded_rows_stream_the_warm_up_first_and_measure_only_the_stream_after_it(
        store: ModelStore, kafka_bootstrap: str, tmp_path: Path) -> None:
    stream = _stream()
    # Labelled records apart from the stream (same sentences, other ids), as the calibration split is.
    warmup = [Example(f"w{i:03d}", text, label, "tiny") for i, (text, label) in enumerate(CORPUS * 2)]
    stage = Stage("tiny", {"name": "tiny", "description": "Sentiment of short sentences.", "labels": LABELS},
                  ["s1", "s2", "s3"], store.uri, stream, tmp_path, kafka_bootstrap, max_length=32,
                  latency_ms=0.0, batch_size=4, concurrency=2, timeout_s=240, progress=False, warmup=warmup)
    methods = base_methods(eps=0.3, target_error=0.3, audit_rate=0.0)
    methods["error_bounded"].voter["min_audit_samples"] = 20
    [row] = evaluate(stage, [], [ReviewerSetting(1.0)], methods, ["error_bounded"], log=lambda _: None)[-1:]

    assert row.method == "error_bounded" and row.warmup_records == len(warmup)
    # Every warm-up record was reviewed (no threshold was certified yet) and took LLM calls of its own
    # (batches of 4; a repeated text is answered from the reviewer's cache).
    assert row.warmup_llm_calls >= len({e.text for e in warmup}) / 4
    # The row is the stream's alone: its records, and the calls made after the warm-up.
    assert row.records == row.decided == len(stream)
    assert row.llm_calls <= len(stream)
    # The voter certified a threshold from the warm-up's audits, so consensus labelled part of the stream.
    assert row.share < 1.0 and row.accuracy >= 0.9
    assert "warm-up records" in row.note
