"""The human review page, filled with the hostile corpus, in a real headless chromium: nothing injected runs.

Every text is shown literally (``textContent``), no element from a text appears in the DOM, no
injected script changes ``document.title`` or adds the ``#pwned`` marker. The browser comes from
the project's set-up (``make install`` installs Debian's chromium when it is missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from autoannotator.reviewer.human import ReviewPage
from autoannotator.reviewer.queue import ReviewQueue

from tests.helpers.cdp import HeadlessChromium, chromium_binary
from tests.helpers.reviewer import LABELS, hard_sample

pytestmark = pytest.mark.timeout(120)

TOKEN = "browser-test-token"
CORPUS = Path(__file__).parents[1] / "data" / "hostile" / "manifest.jsonl"

STATE = """(() => ({
  title: document.title,
  pwned: document.querySelectorAll('#pwned').length,
  injected: document.querySelectorAll('main img, main svg, main iframe, main script, blockquote *').length,
  text: document.getElementById('text').textContent,
  position: document.getElementById('position').textContent,
}))()"""


@pytest.fixture
def page(tmp_path):
    """A review page whose queue holds every text of the hostile corpus."""
    texts = {}
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        case = json.loads(line)
        if isinstance(case.get("json", {}).get("text"), str) and case["json"]["text"].strip():
            texts[case["id"]] = case["json"]["text"]
    queue = ReviewQueue(tmp_path / "queue.sqlite")
    for rid, text in texts.items():
        queue.put(hard_sample(rid, text), "disagreement")
    review = ReviewPage(queue, LABELS, TOKEN)
    review.start("127.0.0.1", 0)
    yield review, texts
    review.stop()
    queue.close()


def test_review_page_shows_hostile_texts_literally_and_runs_none_of_them(page) -> None:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (make install installs Debian's chromium when run as root)")
    review, texts = page
    with HeadlessChromium(binary) as browser:
        browser.navigate(review.url + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('login')")
        browser.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)};"
                         "document.getElementById('login').requestSubmit(); true")
        browser.wait_for("document.getElementById('position').textContent.includes(' of ')")
        shown = {}
        for _ in texts:
            state = browser.evaluate(STATE)
            assert state["title"] == "AutoAnnotator review", f"a script ran: title is {state['title']!r}"
            assert state["pwned"] == 0 and state["injected"] == 0, f"injected markup in the DOM: {state}"
            shown[state["text"]] = state["position"]
            browser.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 's'})); true")
        # After every item was rendered once (and had time to fire any handler), still nothing ran.
        browser.evaluate("new Promise(r => setTimeout(r, 500))")
        final = browser.evaluate(STATE)
    assert final["title"] == "AutoAnnotator review" and final["pwned"] == 0
    assert set(shown) == set(texts.values())  # every text was displayed exactly as it was written
