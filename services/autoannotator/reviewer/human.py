"""The human review page: an aiohttp app, served by the reviewer in its own thread.

``GET /`` serves a static page (no record data) that asks for the access token and then talks
to the JSON API with ``Authorization: Bearer <token>``:

* ``GET /api/queue`` — open items (text, the specialists' votes and probabilities), the label
  set and progress;
* ``POST /api/label`` ``{"id", "label"}`` — label an item (the label must be in the set);
* ``POST /api/undo`` ``{"id"}`` — take a label back while its undo window lasts.

Every ``/api`` request without the right token gets 401; a client with too many failed
attempts in a minute gets 429 until the minute has passed. Record text reaches the page as
JSON and is only ever put into the DOM with ``textContent`` (no HTML injection); the page's
Content-Security-Policy forbids inline scripts as a second line of defence.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections import defaultdict, deque
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

from autoannotator.reviewer.exceptions import ReviewQueueError
from autoannotator.reviewer.llm import normalise
from autoannotator.reviewer.metrics import LOGIN_FAILURES
from autoannotator.reviewer.queue import QueueItem, ReviewQueue

log = logging.getLogger(__name__)

_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'none'; object-src 'none'"


def item_json(item: QueueItem) -> dict:
    """An item as the page shows it: text, reason, uncertainty, each specialist's vote and probabilities."""
    hard = item.hard
    predictions = []
    for pred in hard.predictions:
        probs = dict(zip(pred.labels or hard.labels, (round(p, 4) for p in pred.probs), strict=False))
        vote = max(probs, key=probs.__getitem__) if probs else None
        predictions.append({
            "specialist": pred.specialist, "model_version": pred.model_version, "vote": vote, "probs": probs,
            "status": pred.status,
        })
    return {
        "id": item.record_id,
        "text": hard.record.text,
        "reason": item.reason,
        "uncertainty": round(hard.uncertainty, 4),
        "predictions": predictions,
    }


class ReviewPage:
    """The web app over a :class:`ReviewQueue`; :meth:`start` serves it from a daemon thread."""

    def __init__(
        self, queue: ReviewQueue, labels: list[str], token: str, *, max_failures_per_minute: int = 10
    ) -> None:
        self.queue = queue
        self.labels = list(labels)
        self._by_norm = {normalise(label): label for label in labels}
        self._token = token
        self._max_failures = max_failures_per_minute
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/review.js", self._script)
        app.router.add_get("/static/review.css", self._style)
        app.router.add_get("/api/queue", self._queue)
        app.router.add_post("/api/label", self._label)
        app.router.add_post("/api/undo", self._undo)
        return app

    # -- auth -------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        client = request.remote or "?"
        now = time.monotonic()
        failures = self._failures[client]
        while failures and failures[0] < now - 60:
            failures.popleft()
        if len(failures) >= self._max_failures:
            return web.json_response({"error": "too many failed attempts; wait a minute"}, status=429,
                                     headers={"Retry-After": "60"})
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), self._token.encode()):
            failures.append(now)
            LOGIN_FAILURES.inc()
            log.warning("review page: request with a missing or wrong token from %s", client)
            return web.json_response({"error": "access token required"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    # -- pages ------------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        return self._static("review.html", "text/html")

    async def _script(self, request: web.Request) -> web.Response:
        return self._static("review.js", "application/javascript")

    async def _style(self, request: web.Request) -> web.Response:
        return self._static("review.css", "text/css")

    @staticmethod
    def _static(name: str, ctype: str) -> web.Response:
        body = resources.files("autoannotator.reviewer").joinpath("static", name).read_text(encoding="utf-8")
        return web.Response(text=body, content_type=ctype, charset="utf-8",
                            headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"})

    # -- API --------------------------------------------------------------------------------
    async def _queue(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "50")), 500))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        items = [item_json(item) for item in self.queue.open_items(limit)]
        return web.json_response({"labels": self.labels, "items": items, "progress": self.queue.progress()})

    async def _body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except (ValueError, json.JSONDecodeError):
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}', content_type="application/json") from None
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise web.HTTPBadRequest(text='{"error": "body needs a string id"}', content_type="application/json")
        return body

    async def _label(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        raw = body.get("label")
        label = self._by_norm.get(normalise(raw)) if isinstance(raw, str) else None
        if label is None:
            return web.json_response({"error": f"label must be one of {self.labels}"}, status=400)
        reviewer = str(body.get("reviewer") or "human")[:100]
        try:
            self.queue.label(body["id"], label, reviewer)
        except ReviewQueueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response({"ok": True, "id": body["id"], "label": label, "progress": self.queue.progress()})

    async def _undo(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            self.queue.undo(body["id"])
        except ReviewQueueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        return web.json_response({"ok": True, "id": body["id"], "progress": self.queue.progress()})

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, host: str, port: int) -> str:
        """Serve from a daemon thread; returns the page's base URL."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._runner = web.AppRunner(self.app(), access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, host, port)
                loop.run_until_complete(site.start())
                bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.url = f"http://{host}:{bound}"
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
        log.info("human review page on %s", self.url)
        return self.url

    def stop(self) -> None:
        """Stop serving."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None
