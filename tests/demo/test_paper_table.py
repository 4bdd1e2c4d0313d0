"""The paper table's data split (bench/paper_table.py; every row is a pipeline run: test_paper_harness.py)."""

from __future__ import annotations

import random

import pytest
from autoannotator.demo.datasets import Example
from autoannotator.demo.paper import PaperError, split

LABELS = ["negative", "neutral", "positive"]


def examples(n: int, seed: int = 0) -> list[Example]:
    """``n`` labelled records with texts of varying length."""
    rng = random.Random(seed)
    return [Example(f"r{i:04d}", " ".join(["word"] * rng.randint(3, 30)) + f" {i}", rng.choice(LABELS), "synthetic")
            for i in range(n)]


def test_split_draws_calibration_and_test_from_records_never_in_the_training_part() -> None:
    records = examples(400)
    small = split(records, calibration=20, test=30, seed=1, heldout_share=0.3)
    large = split(records, calibration=50, test=60, seed=2, heldout_share=0.3)
    train_ids = {e.id for e in small.train}
    assert not train_ids & {e.id for e in small.calibration + small.test}
    assert not {e.id for e in small.calibration} & {e.id for e in small.test}
    assert train_ids == {e.id for e in large.train}  # sizes and seed never move a record into training


def test_split_refuses_more_held_out_records_than_exist() -> None:
    with pytest.raises(PaperError, match="exceed"):
        split(examples(50), calibration=40, test=40, seed=0, heldout_share=0.3)
