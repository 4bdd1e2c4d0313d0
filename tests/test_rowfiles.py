"""The one row reader behind ``produce`` and ``train``: rows numbered by line, errors naming the row."""

from __future__ import annotations

from pathlib import Path

import pytest
from autoannotator.tools.producer import InputFileError
from autoannotator.tools.producer import read_rows as input_rows
from autoannotator.trainer.labelled import LabelledFileError, read_labelled


def test_a_bad_json_line_is_named_by_both_readers(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n\n[1, 2]\n')
    with pytest.raises(InputFileError, match=r"rows\.jsonl:3: expected a JSON object, got list"):
        list(input_rows(path))
    with pytest.raises(LabelledFileError, match=r"rows\.jsonl:3: expected a JSON object, got list"):
        read_labelled(path, ["a"])


def test_csv_errors_name_the_line_and_generated_ids_stay_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"two\nlines",a\none,\n')
    assert [(r.id, r.text) for r in input_rows(path)] == [("rows:1", "two\nlines"), ("rows:2", "one")]
    with pytest.raises(LabelledFileError, match=r"rows\.csv:4: label '' is not one of task.labels"):
        read_labelled(path, ["a"])
    path.write_text("body\nx\n")
    with pytest.raises(InputFileError, match=r"rows\.csv:2: no 'text' field"):
        list(input_rows(path))
