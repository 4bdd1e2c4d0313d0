"""Human review: the page's API over HTTP, its token, undo, and a queue that survives restarts."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
from autoannotator.mockllm import MockLLM
from autoannotator.reviewer.human import ReviewPage
from autoannotator.reviewer.queue import ReviewQueue
from autoannotator.reviewer.service import Reviewer
from autoannotator.stream.loop import ServiceLoop
from autoannotator.wire import LabelSource

from tests.helpers.kafka import running, send
from tests.helpers.reviewer import LABELS, dataset, hard_items, hard_sample, read_topic
from tests.helpers.reviewer import group as _group
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
TOKEN = "review-token-for-tests"


async def _call(method: str, url: str, token: str | None = TOKEN, json: dict | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.request(method, url, json=json, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def _sync(method: str, url: str, token: str | None = TOKEN, json: dict | None = None) -> tuple[int, dict]:
    import asyncio

    return asyncio.run(_call(method, url, token, json))


@pytest.fixture
def page(tmp_path) -> Iterator[ReviewPage]:
    queue = ReviewQueue(tmp_path / "queue.sqlite")
    for rid in ("a", "b"):
        queue.put(hard_sample(rid, f"text of {rid} <script>alert(1)</script>"), "disagreement")
    review = ReviewPage(queue, LABELS, TOKEN, max_failures_per_minute=3)
    review.start("127.0.0.1", 0)
    yield review
    review.stop()
    queue.close()


def test_queue_shows_text_votes_and_probabilities(page: ReviewPage) -> None:
    status, body = _sync("GET", f"{page.url}/api/queue")
    assert status == 200
    assert body["labels"] == LABELS
    assert body["progress"] == {"open": 2, "labelled": 0, "emitted": 0}
    item = body["items"][0]
    assert item["text"] == "text of a <script>alert(1)</script>"  # data, put into the page with textContent
    assert [(p["specialist"], p["vote"]) for p in item["predictions"]] == [("s1", "negative"), ("s2", "positive")]
    assert item["predictions"][0]["probs"]["negative"] == pytest.approx(0.7)


def test_api_without_the_token_is_401(page: ReviewPage) -> None:
    assert _sync("GET", f"{page.url}/api/queue", token=None)[0] == 401
    assert _sync("POST", f"{page.url}/api/label", token="wrong", json={"id": "a", "label": "neutral"})[0] == 401
    assert page.queue.progress()["open"] == 2


def test_repeated_bad_tokens_are_rate_limited_but_the_right_token_still_passes(page: ReviewPage) -> None:
    for _ in range(3):
        assert _sync("GET", f"{page.url}/api/queue", token="guess")[0] == 401
    status, body = _sync("GET", f"{page.url}/api/queue", token="guess")
    assert status == 429 and body["retry_after_s"] > 0
    assert _sync("GET", f"{page.url}/api/queue", token="another-guess")[0] == 429  # this IP is limited
    assert _sync("GET", f"{page.url}/api/queue")[0] == 200  # the token is checked first (issue 18, item 5)


def test_a_label_outside_the_set_is_refused(page: ReviewPage) -> None:
    status, body = _sync("POST", f"{page.url}/api/label", json={"id": "a", "label": "maybe"})
    assert status == 400
    assert "one of" in body["error"]
    assert page.queue.get("a").status == "open"


def test_undo_returns_a_label_to_the_queue(page: ReviewPage) -> None:
    assert _sync("POST", f"{page.url}/api/label", json={"id": "a", "label": " Neutral "})[0] == 200
    assert page.queue.get("a").label == "neutral"
    status, body = _sync("POST", f"{page.url}/api/undo", json={"id": "a"})
    assert status == 200
    assert body["progress"]["open"] == 2
    page.queue.label("a", "neutral", "human")
    page.queue.mark_emitted(["a"])
    assert _sync("POST", f"{page.url}/api/undo", json={"id": "a"})[0] == 409  # already flowed out


def test_the_page_never_writes_record_data_as_html(page: ReviewPage) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{page.url}/") as resp:
        html = resp.read().decode()
        csp = resp.headers["Content-Security-Policy"]
    with urllib.request.urlopen(f"{page.url}/static/review.js") as resp:
        script = resp.read().decode()
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script src=\"/static/review.js\"" in html
    assert "innerHTML" not in script and "textContent" in script
    assert "keydown" in script and "/api/undo" in script


def _human_config(make_config, tmp_path, mode: str = "human", **llm: object):
    return make_config(reviewer={
        "mode": mode,
        "cache_path": str(tmp_path / "cache.sqlite"),
        "human": {"port": 0, "queue_path": str(tmp_path / "queue.sqlite"), "undo_window_s": 0},
        "llm": {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, **llm},
    })


def test_a_label_posted_on_the_page_flows_out_to_labels_and_reviewed(
    make_config, kafka_bootstrap, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("AUTOANNOTATOR_REVIEW_TOKEN", raising=False)
    (tmp_path / "tokens").write_text(f"ann {TOKEN}\n")
    texts, _ = dataset(3, "hum")
    config = _human_config(make_config, tmp_path)
    config.reviewer.human.tokens_file = str(tmp_path / "tokens")
    reviewer = Reviewer(config)
    url = reviewer.page.url
    with running(ServiceLoop(config, "reviewer", reviewer, group_id=_group(config), bootstrap=kafka_bootstrap)):
        send(config, kafka_bootstrap, "hard", hard_items(texts))
        assert wait_until(lambda: len(_sync("GET", f"{url}/api/queue")[1]["items"]) == 3, 40)
        # The name in the body is ignored: the person is whoever holds the token (issue 18, item 6).
        assert _sync("POST", f"{url}/api/label", json={"id": "hum1", "label": "positive", "reviewer": "eve"})[0] == 200
        labels = read_topic(config, kafka_bootstrap, "labels", lambda got: len(got) >= 1)
        reviewed = read_topic(config, kafka_bootstrap, "reviewed", lambda got: len(got) >= 1)
        assert wait_until(lambda: reviewer.queue.progress()["emitted"] == 1, 10)
    assert [(m.record_id, m.label, m.source) for m in labels] == [("hum1", "positive", LabelSource.LABEL_SOURCE_HUMAN)]
    assert labels[0].decided_by == "human" and labels[0].record.text == texts["hum1"]
    assert (labels[0].decided_for, labels[0].revision) == ("ann", 1)
    assert [(m.record_id, m.label, m.reviewer) for m in reviewed] == [("hum1", "positive", "human:ann")]


def test_a_restart_loses_nothing_in_the_human_queue(make_config, kafka_bootstrap, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOANNOTATOR_REVIEW_TOKEN", TOKEN)
    texts, _ = dataset(3, "rs")
    config = _human_config(make_config, tmp_path)
    first = Reviewer(config)
    with running(ServiceLoop(config, "reviewer", first, group_id=_group(config), bootstrap=kafka_bootstrap)):
        send(config, kafka_bootstrap, "hard", hard_items(texts))
        assert wait_until(lambda: first.queue.progress()["open"] == 3, 40)
    second = Reviewer(config)  # same queue file, same consumer group
    url = second.page.url
    with running(ServiceLoop(config, "reviewer", second, group_id=_group(config), bootstrap=kafka_bootstrap)):
        status, body = _sync("GET", f"{url}/api/queue")
        assert status == 200 and sorted(item["id"] for item in body["items"]) == sorted(texts)
        for rid in texts:
            assert _sync("POST", f"{url}/api/label", json={"id": rid, "label": "neutral"})[0] == 200
        labels = read_topic(config, kafka_bootstrap, "labels", lambda got: {m.record_id for m in got} >= set(texts))
        assert wait_until(lambda: second.queue.progress() == {"open": 0, "labelled": 0, "emitted": 3}, 10)
    assert sorted(m.record_id for m in labels) == sorted(texts)


def test_llm_plus_human_sends_what_the_llm_cannot_answer_to_the_person(
    make_config, kafka_bootstrap, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("AUTOANNOTATOR_REVIEW_TOKEN", TOKEN)
    texts, gold = dataset(2, "esc")
    mock = MockLLM(gold, fault_rates={"bad_label": 1.0})
    url = mock.start_in_thread()
    try:
        config = _human_config(make_config, tmp_path, "llm+human", base_url=url, batch_size=1, max_label_attempts=2)
        reviewer = Reviewer(config)
        with running(ServiceLoop(config, "reviewer", reviewer, group_id=_group(config), bootstrap=kafka_bootstrap)):
            send(config, kafka_bootstrap, "hard", hard_items(texts))
            assert wait_until(lambda: reviewer.queue.progress()["open"] == 2, 40)
            reasons = {reviewer.queue.get(rid).reason for rid in texts}
            rejected = read_topic(config, kafka_bootstrap, "rejected", lambda got: False, timeout_s=1)
    finally:
        mock.stop_thread()
    assert reasons == {"llm_invalid_label"}
    assert rejected == []


def test_human_mode_without_the_token_variable_is_a_config_error(make_config, tmp_path, monkeypatch) -> None:
    from autoannotator.exceptions import ConfigError

    monkeypatch.delenv("AUTOANNOTATOR_REVIEW_TOKEN", raising=False)
    config = _human_config(make_config, tmp_path)
    with pytest.raises(ConfigError, match=r"reviewer\.human\.token_env"):
        Reviewer(config)
