"""The human review page: an aiohttp app, served by the reviewer in its own thread.

``GET /`` serves a static page (no record data) that asks for the access token and then talks
to the JSON API with ``Authorization: Bearer <token>``; the person is whoever holds the token
(:mod:`autoannotator.reviewer.access`):

* ``GET /api/queue`` — the items waiting for this person (text, why it needs a person, each
  specialist's probabilities and the suggested label), the label set and its descriptions, progress;
* ``POST /api/label`` ``{"id", "label"}`` — label an item (409 with ``code: taken`` when someone
  else already gave the label it needed);
* ``POST /api/undo`` ``{"id"}`` — take one's label back while its undo window lasts;
* ``GET /api/mine`` — this person's recent labels; ``POST /api/correct`` ``{"id", "label"}`` —
  change one (a new revision once it was published);
* ``GET /api/stats`` — agreement between people and between the LLM and people.

Record text reaches the page as JSON and is only ever put into the DOM with ``textContent`` (no
HTML injection); the page's Content-Security-Policy forbids inline scripts as a second line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import threading
import time
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

from autoannotator.config import PipelineConfig
from autoannotator.exceptions import ConfigError
from autoannotator.reviewer.access import MIN_TOKEN_CHARS, FailureLimiter, Person, Tokens, credential_key
from autoannotator.reviewer.agreement import stats
from autoannotator.reviewer.exceptions import ReviewQueueError
from autoannotator.reviewer.llm import normalise
from autoannotator.reviewer.metrics import LOGIN_FAILURES
from autoannotator.reviewer.queue import LabelTaken, NotYours, QueueItem, ReviewQueue
from autoannotator.wire import PredictionStatus

log = logging.getLogger(__name__)

_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'"
_PERSON = web.RequestKey("person", Person)  # the authenticated person, set by the middleware


def item_json(item: QueueItem) -> dict:
    """An item as the page shows it: text, reasons, each specialist's probabilities, the suggested label."""
    hard = item.hard
    predictions = []
    sums: dict[str, float] = {}
    ok = 0
    for pred in hard.predictions:
        probs = dict(zip(pred.labels or hard.labels, (round(p, 4) for p in pred.probs), strict=False))
        vote = max(probs, key=probs.__getitem__) if probs else None
        predictions.append({
            "specialist": pred.specialist, "model_version": pred.model_version, "vote": vote, "probs": probs,
            "status": pred.status,
        })
        if pred.status == PredictionStatus.PREDICTION_STATUS_OK and probs:
            ok += 1
            for label, p in probs.items():
                sums[label] = sums.get(label, 0.0) + p
    mean = {label: round(total / ok, 4) for label, total in sums.items()} if ok else {}
    source = next((p for p in hard.predictions if p.source_topic), None)
    return {
        "id": item.record_id,
        "text": hard.record.text,
        "reason": item.reason,
        "hard_reason": hard.reason,
        "audit": hard.audit,
        "uncertainty": round(hard.uncertainty, 4),
        "predictions": predictions,
        "mean": mean,
        "suggested": max(mean, key=mean.__getitem__) if mean else None,
        "source": ({"topic": source.source_topic, "partition": source.source_partition,
                    "offset": source.source_offset} if source else None),
        "created_ms": hard.record.created_ms or None,
        "queued_s": item.enqueued_at or None,
        "second_opinion": item.status != "open",
    }


class ReviewPage:
    """The web app over a :class:`ReviewQueue`; :meth:`start` serves it from a daemon thread."""

    def __init__(
        self, queue: ReviewQueue, labels: list[str], token: str | Tokens, *, max_failures_per_minute: int = 10,
        undo_window_s: float = 10.0, descriptions: dict[str, str] | None = None,
    ) -> None:
        self.queue = queue
        self.labels = list(labels)
        self.descriptions = dict(descriptions or {})
        self.undo_window_s = undo_window_s
        self._by_norm = {normalise(label): label for label in labels}
        self.tokens = token if isinstance(token, Tokens) else Tokens.single(token)
        self._per_ip = FailureLimiter(max_failures_per_minute)
        self._per_credential = FailureLimiter(max_failures_per_minute)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        for name in ("review.js", "review.css"):
            app.router.add_get(f"/static/{name}", self._asset)
        app.router.add_get("/api/queue", self._queue)
        app.router.add_post("/api/label", self._label)
        app.router.add_post("/api/undo", self._undo)
        app.router.add_get("/api/mine", self._mine)
        app.router.add_post("/api/correct", self._correct)
        app.router.add_get("/api/stats", self._stats)
        return app

    # -- auth -------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        person = self.tokens.person(given)
        if person is not None:  # the token first: valid holders are never locked out
            request[_PERSON] = person
            return await handler(request)
        ip, cred = "ip:" + (request.remote or "?"), "cred:" + credential_key(given)
        wait = max(self._per_ip.wait_s(ip), self._per_credential.wait_s(cred))
        LOGIN_FAILURES.inc()
        if wait > 0:
            seconds = int(wait) + 1
            return web.json_response(
                {"error": f"too many failed attempts; try again in {seconds} s", "code": "locked",
                 "retry_after_s": seconds}, status=429, headers={"Retry-After": str(seconds)})
        self._per_ip.fail(ip)
        self._per_credential.fail(cred)
        log.warning("review page: request with a missing or wrong token from %s", request.remote)
        return web.json_response({"error": "wrong or missing access token", "code": "bad_token"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    # -- pages ------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        return self._static("review.html", "text/html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[1]
        return self._static(name, "application/javascript" if name.endswith(".js") else "text/css")

    @staticmethod
    def _static(name: str, ctype: str) -> web.Response:
        body = resources.files("autoannotator.reviewer").joinpath("static", name).read_text(encoding="utf-8")
        return web.Response(text=body, content_type=ctype, charset="utf-8",
                            headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-store"})

    # -- API --------------------------------------------------------------------------------
    async def _queue(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 500))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        person = request[_PERSON]
        items = [item_json(item) for item in self.queue.open_items(limit, reviewer=person.name)]
        return web.json_response({
            "labels": self.labels, "descriptions": self.descriptions, "items": items,
            "progress": self.queue.progress(), "waiting": self.queue.open_count(person.name),
            "me": {"name": person.name, "admin": person.admin},
            "undo_window_s": self.undo_window_s,
        })

    async def _body(self, request: web.Request, *, label: bool) -> tuple[str, str | None]:
        try:
            body = await request.json()
        except (ValueError, json.JSONDecodeError):
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}', content_type="application/json") from None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise web.HTTPBadRequest(text='{"error": "body needs a string id"}', content_type="application/json")
        if not label:
            return body["id"], None
        raw = body.get("label")
        chosen = self._by_norm.get(normalise(raw)) if isinstance(raw, str) else None
        if chosen is None:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"label must be one of {self.labels}"}),
                                     content_type="application/json")
        return body["id"], chosen

    @staticmethod
    def _conflict(exc: ReviewQueueError) -> web.Response:
        if isinstance(exc, NotYours):
            return web.json_response({"error": str(exc), "code": "not_yours"}, status=403)
        code = "taken" if isinstance(exc, LabelTaken) else "gone"
        return web.json_response({"error": str(exc), "code": code}, status=409)

    async def _label(self, request: web.Request) -> web.Response:
        rid, label = await self._body(request, label=True)
        person = request[_PERSON]
        try:
            primary = self.queue.label(rid, label or "", person.name)
        except ReviewQueueError as exc:
            return self._conflict(exc)
        stats(self.queue)  # the agreement metrics follow every answer
        return web.json_response({"ok": True, "id": rid, "label": label, "by": person.name, "primary": primary,
                                  "undo_until": time.time() + self.undo_window_s,
                                  "progress": self.queue.progress(), "waiting": self.queue.open_count(person.name)})

    async def _undo(self, request: web.Request) -> web.Response:
        rid, _ = await self._body(request, label=False)
        person = request[_PERSON]
        try:
            self.queue.undo(rid, person.name, admin=person.admin)
        except ReviewQueueError as exc:
            return self._conflict(exc)
        return web.json_response({"ok": True, "id": rid, "progress": self.queue.progress(),
                                  "waiting": self.queue.open_count(person.name)})

    async def _mine(self, request: web.Request) -> web.Response:
        person = request[_PERSON]
        items = self.queue.recent(person.name)
        for item in items:
            item["undo_until"] = (item["labelled_at"] + self.undo_window_s
                                  if item["status"] == "labelled" and item["primary"] else None)
        return web.json_response({"items": items, "me": {"name": person.name, "admin": person.admin}})

    async def _correct(self, request: web.Request) -> web.Response:
        rid, label = await self._body(request, label=True)
        person = request[_PERSON]
        try:
            revision = self.queue.correct(rid, label or "", person.name, admin=person.admin)
        except ReviewQueueError as exc:
            return self._conflict(exc)
        stats(self.queue)
        log.info("review page: %s corrected %s to %s (revision %d)", person.name, rid, label, revision)
        return web.json_response({"ok": True, "id": rid, "label": label, "revision": revision,
                                  "undo_until": time.time() + self.undo_window_s})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({**stats(self.queue), "progress": self.queue.progress()})

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve from a daemon thread (HTTPS with ``ssl_context``); returns the page's base URL."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._runner = web.AppRunner(self.app(), access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
                loop.run_until_complete(site.start())
                bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.url = f"{'https' if ssl_context else 'http'}://{host}:{bound}"
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="review-page", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        stats(self.queue)
        log.info("human review page on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None


def open_review_page(config: PipelineConfig) -> tuple[ReviewQueue, ReviewPage]:
    """The queue and the started page of ``reviewer.human``: tokens, bind address, TLS (errors name the field)."""
    hc = config.reviewer.human
    if hc.tokens_file:
        tokens = Tokens.from_file(hc.tokens_file)
    else:
        token = os.environ.get(hc.token_env)
        if not token:
            raise ConfigError(f"reviewer.human.token_env: environment variable {hc.token_env} is not set "
                              "(or give reviewer.human.tokens_file)")
        log.warning("review page: one shared token (%s); every label is attributed to 'human'. Give "
                    "reviewer.human.tokens_file for per-person tokens", hc.token_env)
        if len(token) < MIN_TOKEN_CHARS:
            log.warning("review page: the token in %s is shorter than %d characters", hc.token_env, MIN_TOKEN_CHARS)
        tokens = Tokens.single(token)
    context = None
    if hc.tls_cert_file and hc.tls_key_file:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(hc.tls_cert_file, hc.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"reviewer.human.tls_cert_file: cannot load the certificate and key: {exc}") from exc
    queue = ReviewQueue(hc.queue_path)
    page = ReviewPage(queue, list(config.task.labels), tokens,
                      max_failures_per_minute=hc.max_failed_logins_per_minute, undo_window_s=hc.undo_window_s,
                      descriptions=dict(config.task.label_descriptions))
    try:
        page.start(hc.host, hc.port, context)
    except OSError:
        queue.close()
        raise
    return queue, page
