"""The review page as people use it, in a real headless chromium (Debian's, as the hostile-text test).

Each test drives the page through the DevTools protocol and checks what a person sees: the
message for a wrong token and for a lockout, a record that arrives while the page is open, a
double key press giving one label, a correction becoming revision 2 under the corrector's name,
and a 360 px wide phone layout without horizontal scrolling. Screenshots of the main states are
saved under ``results/review-page/`` (the README shows one).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from autoannotator.reviewer.access import Person, Tokens
from autoannotator.reviewer.human import ReviewPage
from autoannotator.reviewer.queue import ReviewQueue
from autoannotator.wire import TextRecord

from tests.helpers.cdp import HeadlessChromium, chromium_binary
from tests.helpers.reviewer import LABELS, hard_sample
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

ANN, BOB = "ann-token-0123456789abcdef", "bob-token-0123456789abcdef"
SHOTS = Path(__file__).resolve().parents[2] / "results" / "review-page"
DESCRIPTIONS = {"negative": "The author is unhappy: complaint, anger, disappointment.",
                "neutral": "A fact, a question or no clear feeling.",
                "positive": "The author is pleased: praise, thanks, relief."}
TWEETS = ["@united flight delayed 3 hours and nobody at the gate can tell us why",
          "@SouthwestAir is there wifi on the 6am to Denver?",
          "@JetBlue thanks for rebooking me so fast, crew was lovely"]


def _hard(rid: str, text: str):
    hard = hard_sample(rid, text)
    hard.record.CopyFrom(TextRecord(id=rid, text=text, created_ms=1_767_225_600_000))
    for pred in hard.predictions:
        pred.source_topic, pred.source_partition, pred.source_offset = "texts", 0, int(rid[1:])
    return hard


@pytest.fixture
def browser() -> Iterator[HeadlessChromium]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with HeadlessChromium(binary) as chromium:
        yield chromium


@pytest.fixture
def page(tmp_path) -> Iterator[ReviewPage]:
    """A page for ann and bob (an admin), two failed attempts a minute allowed, no undo window."""
    queue = ReviewQueue(tmp_path / "queue.sqlite")
    tokens = Tokens({ANN: Person("ann"), BOB: Person("bob", admin=True)})
    review = ReviewPage(queue, LABELS, tokens, max_failures_per_minute=2, undo_window_s=0,
                        descriptions=DESCRIPTIONS)
    review.start("127.0.0.1", 0)
    yield review
    review.stop()
    queue.close()


def _open(browser: HeadlessChromium, page: ReviewPage, token: str) -> None:
    browser.navigate(page.url + "/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('login')")
    _login(browser, token)


def _login(browser: HeadlessChromium, token: str) -> None:
    browser.evaluate(f"document.getElementById('token').value = {json.dumps(token)};"
                     "document.getElementById('login').requestSubmit(); true")


def _visible(browser: HeadlessChromium, element_id: str) -> str:
    """The element's text when it is shown (and not inside anything hidden), else ''."""
    return browser.evaluate(
        f"(e => e && e.checkVisibility() ? e.textContent : '')(document.getElementById({json.dumps(element_id)}))"
    ) or ""


def _key(browser: HeadlessChromium, *keys: str) -> None:
    """Press keys in one synchronous burst (no time for a request to finish between them)."""
    presses = "".join(f"document.dispatchEvent(new KeyboardEvent('keydown', {{key: {json.dumps(k)}}}));"
                      for k in keys)
    browser.evaluate(presses + " true")


def test_a_wrong_token_shows_a_visible_message(browser, page) -> None:
    _open(browser, page, "not-the-token")
    message = browser.wait_for("document.getElementById('alert').hidden ? '' : "
                               "document.getElementById('alert').textContent", 10)
    assert "access token is not valid" in message
    assert _visible(browser, "alert") == message  # shown, not hidden inside the review pane
    assert browser.evaluate("document.getElementById('login').hidden") is False
    browser.screenshot(SHOTS / "wrong-token.png")


def test_a_lockout_shows_the_wait(browser, page) -> None:
    _open(browser, page, "guess-1")
    browser.wait_for("document.getElementById('alert').textContent.includes('not valid')", 10)
    _login(browser, "guess-2")
    browser.evaluate("new Promise(r => setTimeout(r, 300))")
    _login(browser, "guess-3")
    message = browser.wait_for("(t => t.includes('Too many') && t)(document.getElementById('alert').textContent)", 10)
    assert "Wait" in message and " s" in message
    assert _visible(browser, "alert") == message
    browser.screenshot(SHOTS / "lockout.png")
    _login(browser, ANN)  # the lockout stops guesses, never the holder of a valid token
    browser.wait_for("!document.getElementById('tabs').hidden", 10)


def test_a_record_arriving_while_the_page_is_open_appears_without_a_reload(browser, page) -> None:
    _open(browser, page, ANN)
    browser.wait_for("!document.getElementById('empty').hidden", 10)
    assert "Nothing to review" in _visible(browser, "empty")
    browser.screenshot(SHOTS / "empty.png")
    page.queue.put(_hard("t0", TWEETS[0]), "disagreement")
    shown = browser.wait_for("document.getElementById('review').hidden ? '' : "
                             "document.getElementById('text').textContent", 15)
    assert shown == TWEETS[0]
    assert "1 waiting for you" in browser.evaluate("document.getElementById('progress').textContent")
    assert browser.evaluate("document.getElementById('reason').textContent") == "Specialists disagree"


def test_the_queue_shows_evidence_guidelines_and_the_suggestion(browser, page) -> None:
    for i, text in enumerate(TWEETS):
        page.queue.put(_hard(f"t{i}", text), "human_mode")
    browser.set_viewport(1280, 900)
    _open(browser, page, ANN)
    browser.wait_for("document.getElementById('text').textContent.length > 0", 10)
    state = browser.evaluate("""(() => ({
      bars: document.querySelectorAll('#votes .bar-row').length,
      suggested: [...document.querySelectorAll('#buttons button.suggested')].map(b => b.textContent),
      guidelines: document.getElementById('guidelines').textContent,
      source: document.getElementById('source').textContent,
      viewport: document.querySelector('meta[name=viewport]').content,
    }))()""")
    assert state["bars"] == 3 * 3  # the mean and two specialists, one bar per label
    assert len(state["suggested"]) == 1 and state["suggested"][0].startswith("negative")  # mean 0.4 vs 0.4 vs 0.2
    assert DESCRIPTIONS["neutral"] in state["guidelines"]
    assert "from texts #0@0" in state["source"]
    assert "width=device-width" in state["viewport"]
    browser.screenshot(SHOTS / "queue.png")


def test_a_double_press_gives_one_label(browser, page) -> None:
    for i, text in enumerate(TWEETS[:2]):
        page.queue.put(_hard(f"t{i}", text), "disagreement")
    _open(browser, page, ANN)
    browser.wait_for(f"document.getElementById('text').textContent === {json.dumps(TWEETS[0])}", 10)
    _key(browser, "3", "3")
    assert wait_until(lambda: page.queue.get("t0").status == "labelled", 10)
    browser.wait_for(f"document.getElementById('text').textContent === {json.dumps(TWEETS[1])}", 10)
    browser.evaluate("new Promise(r => setTimeout(r, 500))")
    assert page.queue.progress() == {"open": 1, "labelled": 1, "emitted": 0}
    assert page.queue.get("t1").status == "open"
    assert browser.evaluate("document.getElementById('alert').hidden") is True  # no error for the second press
    assert page.queue.get("t0").reviewer == "ann"  # the identity comes from the token


def test_a_correction_becomes_revision_2_under_the_correctors_name(browser, page) -> None:
    page.queue.put(_hard("t0", TWEETS[0]), "disagreement")
    page.queue.label("t0", "positive", "ann")
    page.queue.mark_emitted(["t0"])  # published as revision 1
    _open(browser, page, ANN)
    browser.wait_for("!document.getElementById('tabs').hidden", 10)
    _key(browser, "m")
    browser.wait_for("document.querySelectorAll('#mine-list select').length === 1", 10)
    assert "published, revision 1" in browser.evaluate("document.getElementById('mine-list').textContent")
    browser.evaluate("document.querySelector('#mine-list select').value = 'negative';"
                     "document.querySelector('#mine-list button').click(); true")
    status = browser.wait_for("(t => t.includes('revision 2') && t)(document.getElementById('status').textContent)", 10)
    assert "Corrected to “negative”" in status
    item = page.queue.get("t0")
    assert (item.status, item.label, item.revision, item.reviewer) == ("labelled", "negative", 2, "ann")
    browser.screenshot(SHOTS / "my-labels.png")


def test_the_page_fits_a_360_px_phone_without_horizontal_scrolling(browser, page) -> None:
    long_word = "x" * 300  # an unbroken token must wrap, not widen the page
    page.queue.put(_hard("t0", TWEETS[0] + " " + long_word), "llm_invalid_label")
    browser.set_viewport(360, 740, mobile=True)
    _open(browser, page, BOB)
    browser.wait_for("document.getElementById('text').textContent.length > 0", 10)
    widths = browser.evaluate("({doc: document.documentElement.scrollWidth, win: window.innerWidth,"
                              " reason: document.getElementById('reason').textContent})")
    assert widths["win"] == 360
    assert widths["doc"] <= widths["win"], f"page is {widths['doc']} px wide in a 360 px window"
    assert "LLM answer invalid" in widths["reason"]
    browser.screenshot(SHOTS / "phone-360.png")
    _key(browser, "a")
    browser.wait_for("document.getElementById('stats-body').textContent.length > 0", 10)
    assert browser.evaluate("document.documentElement.scrollWidth") <= 360


def test_every_action_has_a_visible_focus_style_and_a_key(browser, page) -> None:
    page.queue.put(_hard("t0", TWEETS[0]), "disagreement")
    _open(browser, page, ANN)
    browser.wait_for("document.getElementById('text').textContent.length > 0", 10)
    outlines = []
    for _ in range(6):  # real Tab presses: the keyboard focus ring, as a person sees it
        for kind in ("keyDown", "keyUp"):
            browser.call("Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab", windowsVirtualKeyCode=9)
        outlines.append(browser.evaluate("(s => [document.activeElement.tagName, s.outlineStyle, s.outlineWidth])"
                                         "(getComputedStyle(document.activeElement))"))
    keys = browser.evaluate("[...document.querySelectorAll('#tabs button, #buttons button, #undo-btn')]"
                            ".every(b => b.querySelector('kbd'))")
    assert all(style == "solid" and width == "3px" for _, style, width in outlines), outlines
    assert {tag for tag, _, _ in outlines} == {"BUTTON"}
    assert keys is True


CONTRAST = """(() => {
  const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
  const bg = (e) => { for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c.slice(0, 3); } return [255, 255, 255]; };
  const sel = ['body', '.meta', '#progress', '#buttons button', '#buttons button.suggested', '#tabs button',
               'nav button[aria-current]', '.help', '#status', 'dd', '.bar-row .value', '#reason'];
  return sel.flatMap(s => [...document.querySelectorAll(s)].slice(0, 1).map(e =>
    [s, rgb(getComputedStyle(e).color).slice(0, 3), bg(e)]));
})()"""


def _luminance(rgb: list[float]) -> float:
    channels = [c / 255 for c in rgb]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_text_contrast_meets_wcag_aa(browser, page) -> None:
    page.queue.put(_hard("t0", TWEETS[0]), "disagreement")
    _open(browser, page, ANN)
    browser.wait_for("document.getElementById('text').textContent.length > 0", 10)
    pairs = browser.evaluate(CONTRAST)
    assert len(pairs) >= 10
    for selector, fg, bg in pairs:
        hi, lo = sorted((_luminance(fg), _luminance(bg)), reverse=True)
        ratio = (hi + 0.05) / (lo + 0.05)
        assert ratio >= 4.5, f"{selector}: contrast {ratio:.2f} ({fg} on {bg}) is below WCAG AA 4.5:1"


def test_a_lost_connection_and_a_label_someone_else_gave_show_messages(browser, page) -> None:
    for i, text in enumerate(TWEETS[:2]):
        page.queue.put(_hard(f"t{i}", text), "disagreement")
    _open(browser, page, ANN)
    browser.wait_for(f"document.getElementById('text').textContent === {json.dumps(TWEETS[0])}", 10)
    page.queue.label("t0", "positive", "bob")  # bob was faster
    _key(browser, "1")
    message = browser.wait_for("(t => t.includes('Someone else') && t)(document.getElementById('alert').textContent)",
                               10)
    assert "already labelled" in message
    browser.wait_for(f"document.getElementById('text').textContent === {json.dumps(TWEETS[1])}", 10)
    assert page.queue.get("t0").reviewer == "bob"
    page.stop()  # the server goes away
    message = browser.wait_for(
        "(t => t.includes('Lost connection') && t)(document.getElementById('alert').textContent)", 15)
    assert "Retrying in" in message
    browser.screenshot(SHOTS / "connection-lost.png")


def test_the_undo_window_is_shown_as_it_runs_and_u_takes_the_label_back(browser, tmp_path) -> None:
    queue = ReviewQueue(tmp_path / "undo.sqlite")
    queue.put(_hard("t0", TWEETS[0]), "disagreement")
    review = ReviewPage(queue, LABELS, Tokens({ANN: Person("ann")}), undo_window_s=30, descriptions=DESCRIPTIONS)
    review.start("127.0.0.1", 0)
    try:
        _open(browser, review, ANN)
        browser.wait_for("document.getElementById('text').textContent.length > 0", 10)
        _key(browser, "2")
        bar = browser.wait_for("(e => e.checkVisibility() && e.textContent)(document.getElementById('undo-bar'))", 10)
        assert "Labelled “neutral”. Undo possible for" in bar
        first = int(bar.split("for ")[1].split(" s")[0])
        browser.evaluate("new Promise(r => setTimeout(r, 1300))")
        later = browser.evaluate("document.getElementById('undo-text').textContent")
        assert int(later.split("for ")[1].split(" s")[0]) < first  # it counts down
        browser.screenshot(SHOTS / "undo-window.png")
        _key(browser, "u")
        browser.wait_for("document.getElementById('status').textContent.startsWith('Undone')", 10)
        assert queue.get("t0").status == "open"
        browser.wait_for(f"document.getElementById('text').textContent === {json.dumps(TWEETS[0])}", 10)
    finally:
        review.stop()
        queue.close()
