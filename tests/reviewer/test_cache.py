"""The label cache persists across restarts and is keyed by model, prompt version and text hash."""

from __future__ import annotations

from autoannotator.reviewer.cache import LabelCache
from autoannotator.reviewer.prompt import text_hash


def test_a_cached_label_survives_reopening_the_cache(tmp_path) -> None:
    path = tmp_path / "cache.sqlite"
    first = LabelCache(path)
    first.put("gpt-4o-mini", "v1-abc", text_hash("the flight was late"), "negative")
    first.close()
    second = LabelCache(path)
    assert second.get("gpt-4o-mini", "v1-abc", text_hash("the flight was late")) == "negative"


def test_another_model_or_prompt_version_misses(tmp_path) -> None:
    cache = LabelCache(tmp_path / "cache.sqlite")
    key = text_hash("the flight was late")
    cache.put("gpt-4o-mini", "v1-abc", key, "negative")
    assert cache.get("gpt-4o", "v1-abc", key) is None
    assert cache.get("gpt-4o-mini", "v2-def", key) is None
    assert cache.get("gpt-4o-mini", "v1-abc", text_hash("the flight was early")) is None
