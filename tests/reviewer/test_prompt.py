"""The prompt: task, label descriptions, examples; texts as JSON strings; a version that tracks content."""

from __future__ import annotations

import json

from autoannotator.config import PromptConfig, TaskConfig
from autoannotator.mockllm.server import parse_records
from autoannotator.reviewer.prompt import PromptBuilder, PromptRecord

TASK = TaskConfig(
    description="Sentiment of airline tweets",
    labels=["negative", "neutral", "positive"],
    label_descriptions={"negative": "complaint or anger", "positive": "praise or thanks"},
)
PROMPT = PromptConfig(version="v7", examples=[{"text": "thanks, great crew!", "label": "positive"}])


def test_system_message_names_task_labels_descriptions_and_examples() -> None:
    system = PromptBuilder(TASK, PROMPT).system
    for part in ("Sentiment of airline tweets", '"neutral"', "complaint or anger", "thanks, great crew!",
                 '{"labels": [{"id"'):
        assert part in system


def test_each_record_is_one_json_line_whatever_its_text_contains() -> None:
    nasty = 'line one\nline two "quoted" }{ ]'
    messages = PromptBuilder(TASK, PROMPT).messages([PromptRecord("a", nasty), PromptRecord("b", "plain")])
    record_lines = [line for line in messages[1]["content"].splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in record_lines] == [{"id": "a", "text": nasty}, {"id": "b", "text": "plain"}]
    assert parse_records(messages) == [("a", nasty), ("b", "plain")]


def test_prompt_version_changes_when_the_prompt_content_changes() -> None:
    base = PromptBuilder(TASK, PROMPT).version
    edited = TaskConfig(**{**TASK.model_dump(), "description": "Sentiment of car reviews"})
    assert base.startswith("v7-")
    assert PromptBuilder(TASK, PROMPT).version == base
    assert PromptBuilder(edited, PROMPT).version != base


def test_unicode_line_separators_in_a_text_do_not_split_its_record_line() -> None:
    text = "caf\u00e9 \x85 next\u2028line\u2029para"
    messages = PromptBuilder(TASK, PROMPT).messages([PromptRecord("a", text)])
    record_lines = [line for line in messages[1]["content"].splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in record_lines] == [{"id": "a", "text": text}]
    assert "caf\u00e9" in messages[1]["content"]  # other non-ASCII text stays readable
