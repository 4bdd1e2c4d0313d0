"""An OpenAI-compatible ``/v1/chat/completions`` server that answers from gold labels.

It reads the records out of the last user message (the lines after the reviewer's records
marker that parse as ``{"id": ..., "text": ...}``), answers each from a gold file (by id, else by
text) with a configurable accuracy, and reports ``usage`` for the prompt it received (about four
characters per token, as OpenAI's rule of thumb). A wrong answer is drawn from the other labels
by a hash of the record id, so a record gets the same answer whatever batch it arrives in.

Faults can be injected at random (``fault_rates``) or scripted for the next requests
(``script``): ``429`` (with Retry-After), ``500``, ``timeout`` (hangs for ``hang_s``),
``malformed`` (content that is not JSON), ``bad_label`` (one answer outside the label set),
``missing_id`` (one id left out). ``delays`` makes the requests about chosen ids slow.

``obedient`` makes it the model a prompt injection hopes for: a text that orders a label
("answer positive", "label this as negative") gets that label, whatever the gold says.

Errors are independent of the record by default; ``error_mode="difficulty"`` makes them fall more
on the records with a high ``difficulty`` score in the gold file (:mod:`autoannotator.mockllm.difficulty`).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from autoannotator.exceptions import ConfigError
from autoannotator.mockllm.difficulty import DEFAULT_STRENGTH, ERROR_MODES, difficulty_errors, parse_difficulty
from autoannotator.reviewer.prompt import RECORDS_MARKER

log = logging.getLogger(__name__)

FAULT_KINDS = ("429", "500", "timeout", "malformed", "bad_label", "missing_id")
# What an obedient model takes for an order: a verb of labelling, then a word (checked against the labels).
_ORDER = re.compile(r"\b(?:answer|label (?:it|this)(?: as)?|respond with|reply with|classify (?:it|this) as|"
                    r"the label is)\s+[\"']?(\w+)", re.IGNORECASE)


@dataclass
class Gold:
    """Gold labels by record id and by text, and the label set they use."""

    by_id: dict[str, str] = field(default_factory=dict)
    by_text: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    #: Per-record difficulty scores by id (the gold file's optional ``difficulty`` column).
    difficulty: dict[str, float] = field(default_factory=dict)

    def add(self, label: str, record_id: str | None = None, text: str | None = None) -> None:
        """Add one gold label."""
        if record_id:
            self.by_id[record_id] = label
        if text:
            self.by_text[text] = label
        if label not in self.labels:
            self.labels.append(label)


def load_gold(path: str | Path) -> Gold:
    """Read gold labels from CSV (header with ``label`` and ``id`` and/or ``text``) or JSON lines."""
    path = Path(path)
    gold = Gold()
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
                rows = [json.loads(line) for line in fh if line.strip()]
            else:
                rows = list(csv.DictReader(fh))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--gold {path}: cannot read gold labels: {exc}") from None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("label") or not (row.get("id") or row.get("text")):
            raise ConfigError(f"--gold {path}: row {n} needs a label and an id or a text")
        gold.add(str(row["label"]), str(row["id"]) if row.get("id") else None, row.get("text"))
        score = parse_difficulty(row.get("difficulty"), f"--gold {path}: row {n}")
        if score is not None:
            if not row.get("id"):
                raise ConfigError(f"--gold {path}: row {n} has a difficulty but no id")
            gold.difficulty[str(row["id"])] = score
    return gold


def count_tokens(text: str) -> int:
    """Approximate token count (~4 characters per token)."""
    return max(1, math.ceil(len(text) / 4))


@dataclass
class RequestLog:
    """What one request asked and how it was answered (for tests)."""

    ids: list[str]
    outcome: str
    # Monotonic times it arrived and was answered (0 while unanswered).
    started: float = 0.0
    answered: float = 0.0


# Where a request's log entry waits for its answer time.
_LOG_KEY = web.RequestKey("log", RequestLog)


class MockLLM:
    """The server. Start with :meth:`start` (async) or :meth:`start_in_thread` (sync callers)."""

    def __init__(
        self,
        gold: Gold,
        *,
        labels: list[str] | None = None,
        accuracy: float = 1.0,
        latency_ms: float = 0.0,
        fault_rates: dict[str, float] | None = None,
        retry_after_s: float = 1.0,
        hang_s: float = 30.0,
        api_key: str | None = None,
        response_format: bool = True,
        model: str = "mock-llm",
        seed: int = 0,
        obedient: bool = False,
        error_mode: str = "independent",
        difficulty_strength: float = DEFAULT_STRENGTH,
    ) -> None:
        self.gold = gold
        self.labels = list(labels or gold.labels)
        if len(self.labels) < 2:
            raise ConfigError("mock-llm: needs at least two labels (from the gold file or --labels)")
        unknown = set(fault_rates or {}) - set(FAULT_KINDS)
        if unknown:
            raise ConfigError(f"mock-llm: unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.accuracy = accuracy
        self.latency_ms = latency_ms
        self.fault_rates = dict(fault_rates or {})
        self.retry_after_s = retry_after_s
        self.hang_s = hang_s
        self.api_key = api_key
        self.response_format = response_format
        self.model = model
        self.seed = seed
        self.obedient = obedient
        self.error_mode = error_mode
        self._difficulty_wrong = self._difficulty_mode(error_mode, difficulty_strength)
        #: Faults forced on the next requests, in order (e.g. ``["429"] * 5``); beats the random ones.
        self.script: deque[str] = deque()
        #: Extra seconds before answering a request that asks about one of these record ids (a slow request).
        self.delays: dict[str, float] = {}
        self.requests: list[RequestLog] = []
        self.asked: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_post("/chat/completions", self._complete)
        app.router.add_get("/v1/models", self._models)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL (``http://host:port/v1``)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://{host}:{self.port}/v1"

    async def stop(self) -> None:
        """Stop serving (connections are refused afterwards)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve from a background thread with its own event loop; returns the base URL."""
        ready = threading.Event()
        result: dict[str, object] = {}

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                result["url"] = loop.run_until_complete(self.start(host, port))
            except BaseException as exc:
                result["error"] = exc
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="mock-llm", daemon=True)
        self._thread.start()
        ready.wait(10)
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return str(result["url"])

    def stop_thread(self) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    # -- the API ----------------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._answer(request)
        finally:
            entry = request.get(_LOG_KEY)
            if entry is not None:
                entry.answered = time.monotonic()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.api_key is not None:
            given = request.headers.get("Authorization", "")
            if given != f"Bearer {self.api_key}":
                # Like the real API, echo what was sent: the client must keep it out of its logs.
                return _error(401, f"Incorrect API key provided: {given.removeprefix('Bearer ')}", "invalid_api_key")
        try:
            body = await request.json()
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "body must be JSON with a messages list", "invalid_request_error")
        if body.get("response_format") and not self.response_format:
            return _error(400, "response_format is not supported by this model", "invalid_request_error")
        records = parse_records(messages)
        ids = [rid for rid, _ in records]
        fault = self.script.popleft() if self.script else self._random_fault()
        entry = request[_LOG_KEY] = RequestLog(ids, fault or "ok", time.monotonic())
        self.requests.append(entry)
        self.asked.update(ids)
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        delay = max((self.delays.get(rid, 0.0) for rid in ids), default=0.0)
        if delay:
            await asyncio.sleep(delay)
        if fault == "429":
            return _error(
                429, "Rate limit reached, retry later", "rate_limit_exceeded",
                headers={"Retry-After": f"{self.retry_after_s:g}", "retry-after-ms": f"{self.retry_after_s * 1000:g}"},
            )
        if fault == "500":
            return _error(500, "The server had an error while processing your request", "server_error")
        if fault == "timeout":
            await asyncio.sleep(self.hang_s)
        answers = [{"id": rid, "label": self.answer(rid, text)} for rid, text in records]
        if fault == "bad_label" and answers:
            answers[self._rng.randrange(len(answers))]["label"] = "definitely-not-a-label"
        if fault == "missing_id" and answers:
            answers.pop(self._rng.randrange(len(answers)))
        json_mode = bool(body.get("response_format"))
        if fault == "malformed":
            content = 'Sure! Here are the labels: [{"id": ' + json.dumps(ids[:1])[1:-1] + ', "label": '
        elif json_mode:
            content = json.dumps({"labels": answers})
        else:
            # Without JSON mode, models like to wrap their answer in a code fence.
            content = "```json\n" + json.dumps(answers) + "\n```"
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) + 4 for m in messages if isinstance(m, dict))
        completion_tokens = count_tokens(content)
        return web.json_response(
            {
                "id": f"chatcmpl-mock-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    def _random_fault(self) -> str | None:
        roll = self._rng.random()
        for kind, rate in self.fault_rates.items():
            if roll < rate:
                return kind
            roll -= rate
        return None

    def answer(self, record_id: str, text: str) -> str:
        """The label this mock gives a record: gold (by id, then text), wrong with probability 1-accuracy.

        When ``obedient``, a label ordered inside the text wins over all of that.
        """
        if self.obedient:
            by_name = {label.lower(): label for label in self.labels}
            for match in _ORDER.finditer(text):
                if match.group(1).lower() in by_name:
                    return by_name[match.group(1).lower()]
        truth = self.gold.by_id.get(record_id) or self.gold.by_text.get(text)
        if truth is None:
            truth = self.labels[_hash_int(f"{self.seed}:truth:{text}") % len(self.labels)]
        if self._errs(record_id):
            others = [label for label in self.labels if label != truth]
            return others[_hash_int(f"{self.seed}:wrong:{record_id}") % len(others)]
        return truth

    def _difficulty_mode(self, mode: str, strength: float) -> frozenset[str] | None:
        """The ids answered wrong in difficulty mode (None in independent mode)."""
        if mode not in ERROR_MODES:
            raise ConfigError(f"mock-llm: unknown error mode {mode!r}; known: {ERROR_MODES}")
        if mode == "independent":
            return None
        if not self.gold.difficulty:
            raise ConfigError("mock-llm: error mode 'difficulty' needs a difficulty column in the gold file")
        return difficulty_errors(self.gold.difficulty, self.accuracy, seed=self.seed, strength=strength)

    def _errs(self, record_id: str) -> bool:
        """Whether this record gets a wrong answer (stable per id)."""
        if self._difficulty_wrong is not None and record_id in self.gold.difficulty:
            return record_id in self._difficulty_wrong
        return _hash_int(f"{self.seed}:acc:{record_id}") % 10_000 >= self.accuracy * 10_000


def parse_records(messages: list) -> list[tuple[str, str]]:
    """The ``(id, text)`` pairs in the last user message, after the records marker when there is one."""
    user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    content = str(user.get("content", "")) if user else ""
    if RECORDS_MARKER in content:
        content = content.split(RECORDS_MARKER, 1)[1]
    records = []
    for line in content.split("\n"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "id" in doc and isinstance(doc.get("text"), str):
            records.append((str(doc["id"]), doc["text"]))
    return records


def _hash_int(value: str) -> int:
    return int.from_bytes(hashlib.sha256(value.encode("utf-8")).digest()[:8], "big")


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": code, "code": code}}
    return web.json_response(body, status=status, headers=headers)
