"""Who may use the review page (issue 18, items 5-7): token first, bounded limits, per-person tokens, binding, TLS.

Each test here failed on the main branch before the fix: the lockout was checked before the
token and kept per IP only in an unbounded map; the reviewer's name came from the request body
and anyone could undo anyone's label; the page could not serve HTTPS.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from autoannotator.config import parse_config
from autoannotator.exceptions import ConfigError
from autoannotator.reviewer.access import FailureLimiter, Person, Tokens
from autoannotator.reviewer.human import ReviewPage, open_review_page
from autoannotator.reviewer.queue import ReviewQueue

from tests.helpers.reviewer import LABELS, hard_sample

pytestmark = pytest.mark.timeout(60)
ANN, BOB, ROOT = "ann-token-0123456789abcdef", "bob-token-0123456789abcdef", "root-token-0123456789abcdef"


def _call(method: str, url: str, token: str | None, json: dict | None = None, **kw: object) -> tuple[int, dict]:
    async def go() -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.request(method, url, json=json, headers=headers,
                                                                      **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    return asyncio.run(go())


@pytest.fixture
def page(tmp_path) -> Iterator[ReviewPage]:
    """ann and bob review; root is an admin; two failed attempts a minute."""
    queue = ReviewQueue(tmp_path / "queue.sqlite")
    for rid in ("a", "b", "c"):
        queue.put(hard_sample(rid, f"text {rid}"), "disagreement")
    tokens = Tokens({ANN: Person("ann"), BOB: Person("bob"), ROOT: Person("root", admin=True)})
    review = ReviewPage(queue, LABELS, tokens, max_failures_per_minute=2, undo_window_s=60)
    review.start("127.0.0.1", 0)
    yield review
    review.stop()
    queue.close()


# -- item 5: the lockout -------------------------------------------------------------------------
def test_bad_requests_from_a_shared_ip_never_lock_out_valid_tokens(page: ReviewPage) -> None:
    for _ in range(2):
        assert _call("GET", f"{page.url}/api/queue", "wrong-guess")[0] == 401
    assert _call("GET", f"{page.url}/api/queue", "wrong-guess")[0] == 429
    assert _call("GET", f"{page.url}/api/queue", "yet-another-guess")[0] == 429  # the IP is limited too
    for token in (ANN, BOB, ROOT):  # everyone behind the same ingress IP still gets in
        assert _call("GET", f"{page.url}/api/queue", token)[0] == 200


def test_failures_are_counted_per_credential_and_per_ip() -> None:
    limiter = FailureLimiter(2)
    for _ in range(2):
        limiter.fail("cred:abc", now=100.0)
    assert limiter.wait_s("cred:abc", now=101.0) == pytest.approx(59.0)  # this credential, from any IP
    assert limiter.wait_s("cred:other", now=101.0) == 0.0
    assert limiter.wait_s("cred:abc", now=160.5) == 0.0  # the minute has passed
    assert len(limiter) == 0  # and the key is gone


def test_the_failure_maps_stay_bounded() -> None:
    limiter = FailureLimiter(1, max_keys=100)
    for i in range(5000):
        limiter.fail(f"cred:{i}", now=1.0)
    assert len(limiter) == 100
    assert limiter.wait_s("cred:4999", now=2.0) > 0  # the newest keys are kept
    assert limiter.wait_s("cred:0", now=2.0) == 0.0  # the oldest were dropped


# -- item 6: identity from the token -------------------------------------------------------------
def test_the_identity_comes_from_the_token_not_the_body(page: ReviewPage) -> None:
    status, body = _call("POST", f"{page.url}/api/label", ANN, {"id": "a", "label": "neutral", "reviewer": "bob"})
    assert status == 200 and body["by"] == "ann"
    assert page.queue.get("a").reviewer == "ann"


def test_a_person_can_undo_only_their_own_labels_unless_admin(page: ReviewPage) -> None:
    assert _call("POST", f"{page.url}/api/label", ANN, {"id": "a", "label": "neutral"})[0] == 200
    status, body = _call("POST", f"{page.url}/api/undo", BOB, {"id": "a"})
    assert status == 403 and body["code"] == "not_yours"
    assert page.queue.get("a").status == "labelled"
    status, _ = _call("POST", f"{page.url}/api/correct", BOB, {"id": "a", "label": "positive"})
    assert status == 403
    assert _call("POST", f"{page.url}/api/undo", ROOT, {"id": "a"})[0] == 200  # an admin may
    assert page.queue.get("a").status == "open"
    assert _call("POST", f"{page.url}/api/label", BOB, {"id": "a", "label": "positive"})[0] == 200
    assert _call("POST", f"{page.url}/api/undo", BOB, {"id": "a"})[0] == 200  # one's own label


def test_a_label_someone_else_gave_is_a_clear_409(page: ReviewPage) -> None:
    assert _call("POST", f"{page.url}/api/label", ANN, {"id": "b", "label": "neutral"})[0] == 200
    status, body = _call("POST", f"{page.url}/api/label", BOB, {"id": "b", "label": "positive"})
    assert status == 409 and body["code"] == "taken" and "ann" in body["error"]


def test_the_tokens_file_names_people_and_admins(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# reviewers\nann {ANN}\nroot {ROOT} admin  # the lead\n\n")
    tokens = Tokens.from_file(path)
    assert tokens.person(ANN) == Person("ann") and tokens.person(ROOT) == Person("root", admin=True)
    assert tokens.person("nobody") is None and tokens.person("") is None


@pytest.mark.parametrize(("text", "match"), [
    ("ann\n", r"line 1: expected 'name token'"),
    (f"ann {ANN} superuser\n", r"line 1: expected"),
    ("ann short\n", r"line 1: the token of ann is shorter than 16"),
    (f"ann {ANN}\nbob {ANN}\n", r"line 2: bob or its token appears twice"),
    ("bad/name 0123456789abcdefgh\n", r"line 1: name 'bad/name'"),
    ("# nobody\n", r"names no person"),
])
def test_a_bad_tokens_file_is_a_config_error_naming_the_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"reviewer\.human\.tokens_file: .*" + match):
        Tokens.from_file(path)


def test_single_token_mode_still_works_and_warns(make_config, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("AUTOANNOTATOR_REVIEW_TOKEN", ANN)
    config = make_config(create=False, reviewer={"mode": "human", "human": {
        "port": 0, "queue_path": str(tmp_path / "q.sqlite")}})
    with caplog.at_level(logging.WARNING, logger="autoannotator.reviewer.human"):
        queue, page = open_review_page(config)
    try:
        assert "one shared token" in caplog.text
        status, body = _call("GET", f"{page.url}/api/queue", ANN)
        assert status == 200 and body["me"] == {"name": "human", "admin": True}
    finally:
        page.stop()
        queue.close()


# -- item 7: where it listens, and TLS -----------------------------------------------------------
def test_metrics_and_the_page_bind_to_loopback_by_default() -> None:
    config = parse_config({"task": {"labels": LABELS}})
    assert config.metrics.host == "127.0.0.1" and config.reviewer.human.host == "127.0.0.1"


def test_the_page_serves_https_with_certificate_files(make_config, tmp_path, monkeypatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("AUTOANNOTATOR_REVIEW_TOKEN", ANN)
    config = make_config(create=False, reviewer={"mode": "human", "human": {
        "port": 0, "queue_path": str(tmp_path / "q.sqlite"), "tls_cert_file": str(cert), "tls_key_file": str(key)}})
    queue, page = open_review_page(config)
    try:
        assert page.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        assert _call("GET", f"{page.url}/api/queue", ANN, ssl=context)[0] == 200
    finally:
        page.stop()
        queue.close()


def test_tls_needs_both_files() -> None:
    with pytest.raises(ConfigError, match=r"tls_key_file: set tls_cert_file and tls_key_file together"):
        parse_config({"task": {"labels": LABELS}, "reviewer": {"human": {"tls_cert_file": "/x.pem"}}})
