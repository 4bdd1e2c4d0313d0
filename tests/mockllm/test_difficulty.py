"""mock-llm's difficulty-correlated errors: the stated accuracy overall, more errors on hard records."""

from __future__ import annotations

import random

import pytest
from autoannotator.cli import build_parser
from autoannotator.exceptions import ConfigError
from autoannotator.mockllm import Gold, MockLLM, load_gold
from autoannotator.mockllm.commands import build

LABELS = ["negative", "neutral", "positive"]


def _scored_gold(n: int, seed: int = 0) -> Gold:
    """``n`` gold records, each with a difficulty score in [0, 1)."""
    rng = random.Random(seed)
    gold = Gold(labels=list(LABELS))
    for i in range(n):
        gold.add(LABELS[i % 3], record_id=f"r{i:05d}")
        gold.difficulty[f"r{i:05d}"] = rng.random()
    return gold


def _wrong(mock: MockLLM, gold: Gold) -> set[str]:
    return {rid for rid, label in gold.by_id.items() if mock.answer(rid, "") != label}


@pytest.mark.parametrize("accuracy", [0.70, 0.80, 0.92])
def test_difficulty_mode_keeps_the_stated_accuracy_within_a_point_on_2000_records(accuracy: float) -> None:
    gold = _scored_gold(2000)
    mock = MockLLM(gold, labels=LABELS, accuracy=accuracy, error_mode="difficulty")
    measured = 1 - len(_wrong(mock, gold)) / 2000
    assert measured == pytest.approx(accuracy, abs=0.01)


@pytest.mark.parametrize("accuracy", [0.70, 0.92])
def test_difficulty_mode_errs_more_on_the_harder_half(accuracy: float) -> None:
    gold = _scored_gold(2000, seed=1)
    wrong = _wrong(MockLLM(gold, labels=LABELS, accuracy=accuracy, error_mode="difficulty"), gold)
    ranked = sorted(gold.difficulty, key=gold.difficulty.__getitem__)
    easy, hard = set(ranked[:1000]), set(ranked[1000:])
    easy_error, hard_error = len(wrong & easy) / 1000, len(wrong & hard) / 1000
    assert hard_error > 2 * easy_error
    # The independent mode, on the same records, errs about as much on both halves.
    independent = _wrong(MockLLM(gold, labels=LABELS, accuracy=accuracy), gold)
    assert abs(len(independent & hard) - len(independent & easy)) / 1000 < 0.05


def test_difficulty_mode_answers_a_record_the_same_whatever_the_batch_or_restart() -> None:
    gold = _scored_gold(300)
    first = MockLLM(gold, labels=LABELS, accuracy=0.8, error_mode="difficulty")
    again = MockLLM(gold, labels=LABELS, accuracy=0.8, error_mode="difficulty")
    backwards = [again.answer(rid, "") for rid in reversed(gold.by_id)][::-1]
    assert [first.answer(rid, "") for rid in gold.by_id] == backwards


def test_difficulty_mode_without_scores_is_refused_naming_the_column() -> None:
    gold = Gold(labels=list(LABELS))
    gold.add("positive", record_id="r1")
    with pytest.raises(ConfigError, match="difficulty column"):
        MockLLM(gold, labels=LABELS, accuracy=0.9, error_mode="difficulty")


def test_unknown_error_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="error mode"):
        MockLLM(_scored_gold(10), labels=LABELS, error_mode="adversarial")


def test_gold_file_difficulty_column_is_read_and_a_bad_score_names_the_row(tmp_path) -> None:
    good = tmp_path / "gold.csv"
    good.write_text("id,text,label,difficulty\na,x,positive,0.9\nb,y,negative,\n")
    gold = load_gold(good)
    assert gold.difficulty == {"a": 0.9}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,label,difficulty\na,x,positive,0.9\nb,y,negative,hard\n")
    with pytest.raises(ConfigError, match="row 2: difficulty 'hard'"):
        load_gold(bad)


def test_cli_selects_the_difficulty_mode(tmp_path) -> None:
    path = tmp_path / "gold.csv"
    path.write_text("id,text,label,difficulty\n" + "".join(f"r{i},t{i},{LABELS[i % 3]},{i}\n" for i in range(100)))
    args = build_parser().parse_args(["mock-llm", "--gold", str(path), "--accuracy", "0.8",
                                      "--error-mode", "difficulty"])
    mock = build(args)
    wrong = {f"r{i}" for i in range(100) if mock.answer(f"r{i}", "") != LABELS[i % 3]}
    assert len(wrong) == 20
    assert sum(int(rid[1:]) >= 50 for rid in wrong) > 10  # most on the high-difficulty half


def test_records_added_without_a_score_leave_the_wrong_answers_among_the_scored_ones_unchanged(tmp_path) -> None:
    # The paper table's warm-up: the gold file holds the measured stream (scored) and warm-up
    # records (no score); the stream must get the same wrong answers as in a run without them.
    from autoannotator.demo.datasets import Example
    from autoannotator.mockllm.process import write_gold_csv

    rng = random.Random(3)
    stream = [Example(f"s{i:04d}", f"text {i}", LABELS[i % 3], "d") for i in range(500)]
    warmup = [Example(f"w{i:04d}", f"warm {i}", LABELS[i % 3], "d") for i in range(300)]
    scores = {e.id: rng.random() for e in stream}
    alone = load_gold(write_gold_csv(tmp_path / "alone.csv", stream, scores))
    both = load_gold(write_gold_csv(tmp_path / "both.csv", [*warmup, *stream], scores))
    wrong_alone = _wrong(MockLLM(alone, accuracy=0.92, error_mode="difficulty"), alone)
    wrong_both = _wrong(MockLLM(both, accuracy=0.92, error_mode="difficulty"), both)
    assert wrong_alone == {rid for rid in wrong_both if rid.startswith("s")} and len(wrong_alone) == 40
    # The unscored records are answered with independent errors at the same accuracy.
    assert 0.85 <= 1 - sum(rid.startswith("w") for rid in wrong_both) / len(warmup) <= 0.98
