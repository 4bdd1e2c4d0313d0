"""Async client of an OpenAI-compatible ``/v1/chat/completions`` endpoint that returns valid labels.

Two layers:

* :meth:`LLMClient.complete` sends one request, with retries on 429/5xx/timeouts/connection
  errors (exponential backoff with jitter, or the server's ``retry-after-ms`` / ``Retry-After``
  when reasonable, as openai-python's ``_base_client.py`` does), a circuit breaker that stops
  sending while the endpoint is down, and a fallback when the server rejects ``response_format``.
* :meth:`LLMClient.label` labels records: cache first, then batches of ``batch_size`` records per
  request with ``concurrency`` requests in flight; every answer is validated against the label
  set (case/whitespace-normalised); ids whose answer was missing, malformed or outside the set
  are asked again, alone with the other such ids, up to ``max_label_attempts`` rounds. A record
  ends as ``labelled``, ``invalid`` (no valid answer: escalate or reject, never guess) or
  ``deferred`` (endpoint down, budget reached: try again later, nothing is lost).

The API key goes into the Authorization header only; every error message is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

import aiohttp

from autoannotator.config import LLMConfig
from autoannotator.reviewer.budget import Budget
from autoannotator.reviewer.cache import LabelCache
from autoannotator.reviewer.exceptions import (
    AuthenticationError,
    BadRequest,
    CircuitOpen,
    LLMConnectionError,
    LLMError,
    LLMTimeout,
    MalformedAnswer,
    RateLimited,
    ServerError,
)
from autoannotator.reviewer.metrics import BREAKER_OPEN, LLM_BATCH_RECORDS, LLM_LATENCY, LLM_REQUESTS
from autoannotator.reviewer.prompt import PromptBuilder, PromptRecord, text_hash

log = logging.getLogger(__name__)

URL_ENV = "AUTOANNOTATOR_LLM_URL"


@dataclass
class Completion:
    """One successful response: the message content and its usage."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    usd: float
    model: str


@dataclass
class Answer:
    """What became of one record.

    ``status``: ``labelled`` (``label`` is valid), ``invalid`` (no valid answer after
    ``max_label_attempts`` rounds; ``reason`` says why) or ``deferred`` (not decided now: endpoint
    down or budget reached; ask again later).
    """

    record_id: str
    status: str
    label: str | None = None
    reason: str = ""
    detail: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usd: float = 0.0
    cached: bool = False
    attempts: int = 0


@dataclass
class _Round:
    """Result of one request for a chunk of records."""

    answers: dict[str, str] = field(default_factory=dict)
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (reason, detail)
    error: LLMError | None = None


class CircuitBreaker:
    """Opens after ``failures`` consecutive failed requests; lets a probe through after ``cooldown_s``.

    A failed probe re-opens it at once (the failure count is only reset by a success).
    """

    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self.failures = 0
        self.opened_at: float | None = None

    @property
    def retry_at(self) -> float | None:
        """When requests may be sent again; None when the breaker is closed or may probe."""
        if self.opened_at is None:
            return None
        at = self.opened_at + self.cooldown_s
        return at if time.monotonic() < at else None

    def check(self) -> None:
        """Raise :class:`CircuitOpen` while the breaker forbids requests."""
        retry_at = self.retry_at
        if retry_at is not None:
            raise CircuitOpen(f"LLM endpoint failing ({self.failures} consecutive failures); circuit open", retry_at)

    def success(self) -> None:
        """A request succeeded: close."""
        if self.opened_at is not None:
            log.info("LLM endpoint answers again: circuit closed")
        self.failures = 0
        self.opened_at = None
        BREAKER_OPEN.set(0)

    def failure(self) -> None:
        """A request failed (5xx, timeout, unreachable)."""
        self.failures += 1
        if self.failures >= self.threshold:
            if self.opened_at is None or self.retry_at is None:
                log.warning("LLM endpoint failed %d times in a row: circuit open for %.1fs",
                            self.failures, self.cooldown_s)
            self.opened_at = time.monotonic()
            BREAKER_OPEN.set(1)


def normalise(label: str) -> str:
    """Case- and whitespace-insensitive form of a label."""
    return " ".join(label.split()).casefold()


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(content: str) -> list[tuple[str, str]]:
    """``(id, label)`` pairs from the model's content; raises :class:`MalformedAnswer` if it has none.

    Accepts ``{"labels": [...]}``, any object with one list of answers, or a bare list, optionally
    inside a Markdown code fence.
    """
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content.strip()
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise MalformedAnswer(f"content is not JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if "labels" in doc and isinstance(doc["labels"], list):
            doc = doc["labels"]
        elif len(lists) == 1:
            doc = lists[0]
        elif "id" in doc and "label" in doc:
            doc = [doc]
    if not isinstance(doc, list):
        raise MalformedAnswer(f"expected a JSON list of answers, got {type(doc).__name__}")
    pairs = []
    for item in doc:
        if isinstance(item, dict) and isinstance(item.get("id"), str | int) and isinstance(item.get("label"), str):
            pairs.append((str(item["id"]), item["label"]))
    if not pairs and doc:
        raise MalformedAnswer("no entry of the answer has a string id and a string label")
    return pairs


def _retry_after(headers: aiohttp.typedefs.LooseHeaders | None) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, then ``Retry-After``), or None."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")  # type: ignore[union-attr]
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")  # type: ignore[union-attr]
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


class LLMClient:
    """Labels records through a chat-completions endpoint. Use inside one event loop; close with :meth:`aclose`."""

    def __init__(
        self,
        config: LLMConfig,
        prompt: PromptBuilder,
        *,
        budget: Budget | None = None,
        cache: LabelCache | None = None,
    ) -> None:
        self.config = config
        self.prompt = prompt
        self.budget = budget
        self.cache = cache
        self.base_url = (os.environ.get(URL_ENV) or config.base_url).rstrip("/")
        self._api_key = os.environ.get(config.api_key_env) or ""
        self._labels = {normalise(label): label for label in prompt.labels}
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self.response_format = config.response_format
        self._session: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self.requests = 0

    # -- plumbing ---------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "[api key]") if self._api_key else text

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.config.concurrency),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            )
            self._semaphore = asyncio.Semaphore(self.config.concurrency)
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one request ------------------------------------------------------------------------
    async def complete(self, messages: list[dict[str, str]]) -> Completion:
        """One chat completion, retried on transient failures; raises a named :class:`LLMError`."""
        await self._ensure_session()
        assert self._semaphore is not None
        async with self._semaphore:
            attempt = 0
            while True:
                self.breaker.check()
                if self.budget is not None:
                    self.budget.check()
                try:
                    return await self._post(messages)
                except BadRequest:
                    if not self.response_format:
                        raise
                    # Some OpenAI-compatible servers reject response_format: ask again without it.
                    log.warning("LLM endpoint rejected response_format; asking for JSON in the prompt only")
                    self.response_format = False
                except (RateLimited, ServerError, LLMTimeout, LLMConnectionError) as exc:
                    if attempt >= self.config.max_retries:
                        raise
                    delay = self._delay(attempt, getattr(exc, "retry_after_s", None))
                    log.info("LLM request failed (%s); retry %d/%d in %.2fs",
                             exc, attempt + 1, self.config.max_retries, delay)
                    attempt += 1
                    await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None and 0 < retry_after_s <= self.config.max_retry_after_s:
            return retry_after_s
        delay = min(self.config.backoff_initial_s * 2**attempt, self.config.backoff_max_s)
        return delay * (1 - 0.25 * random.random())  # jitter so concurrent retries spread out

    async def _post(self, messages: list[dict[str, str]]) -> Completion:
        assert self._session is not None
        payload: dict[str, object] = {
            "model": self.config.model,
            "messages": messages,
            "temperature": self.config.temperature,
        }
        if self.response_format:
            payload["response_format"] = {"type": "json_object"}
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        started = time.perf_counter()
        self.requests += 1
        try:
            async with self._session.post(
                f"{self.base_url}/chat/completions", json=payload, headers=headers
            ) as resp:
                body = await resp.text()
                status, resp_headers = resp.status, resp.headers
        except TimeoutError:
            self._failed(LLMTimeout.status, started)
            raise LLMTimeout(f"no response within {self.config.timeout_s}s") from None
        except aiohttp.ClientError as exc:
            self._failed(LLMConnectionError.status, started)
            raise LLMConnectionError(self._redact(f"cannot reach {self.base_url}: {exc}")) from None
        if status == 200:
            try:
                doc = json.loads(body)
                content = doc["choices"][0]["message"]["content"] or ""
                usage = doc.get("usage") or {}
                prompt_tokens = int(usage.get("prompt_tokens", 0))
                completion_tokens = int(usage.get("completion_tokens", 0))
            except (ValueError, KeyError, IndexError, TypeError):
                self._failed(ServerError.status, started)
                raise ServerError("HTTP 200 but the body is not a chat completion") from None
            self.breaker.success()
            LLM_REQUESTS.labels("ok").inc()
            LLM_LATENCY.observe(time.perf_counter() - started)
            usd = self.budget.charge(self.config.model, prompt_tokens, completion_tokens) if self.budget else 0.0
            return Completion(content, prompt_tokens, completion_tokens, usd, self.config.model)
        message = self._redact(f"HTTP {status} from {self.base_url}: {_error_message(body)}")
        if status == 429:
            LLM_REQUESTS.labels(RateLimited.status).inc()
            LLM_LATENCY.observe(time.perf_counter() - started)
            raise RateLimited(message, _retry_after(resp_headers))  # the endpoint is up: not a breaker failure
        if status in (401, 403):
            self._failed(AuthenticationError.status, started)
            raise AuthenticationError(message)
        if status >= 500 or status in (408, 409):
            self._failed(ServerError.status, started)
            raise ServerError(message, _retry_after(resp_headers))
        LLM_REQUESTS.labels(BadRequest.status).inc()
        LLM_LATENCY.observe(time.perf_counter() - started)
        raise BadRequest(message)

    def _failed(self, status: str, started: float) -> None:
        LLM_REQUESTS.labels(status).inc()
        LLM_LATENCY.observe(time.perf_counter() - started)
        self.breaker.failure()

    # -- labelling --------------------------------------------------------------------------
    async def label(self, records: Sequence[PromptRecord]) -> dict[str, Answer]:
        """An :class:`Answer` for every record (by id): labelled, invalid or deferred."""
        outcomes: dict[str, Answer] = {}
        todo: list[PromptRecord] = []
        for rec in records:
            cached = self.cache.get(self.config.model, self.prompt.version, text_hash(rec.text)) if self.cache else None
            if cached is not None and normalise(cached) in self._labels:
                outcomes[rec.id] = Answer(rec.id, "labelled", self._labels[normalise(cached)], cached=True)
            else:
                todo.append(rec)
                outcomes[rec.id] = Answer(rec.id, "invalid", reason="llm_no_answer")
        for attempt in range(1, self.config.max_label_attempts + 1):
            if not todo:
                break
            chunks = [todo[i : i + self.config.batch_size] for i in range(0, len(todo), self.config.batch_size)]
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._ask(chunk)) for chunk in chunks]
            retry: list[PromptRecord] = []
            for chunk, task in zip(chunks, tasks, strict=True):
                result, completion = task.result()
                self._attribute(chunk, completion, outcomes)
                for rec in chunk:
                    out = outcomes[rec.id]
                    out.attempts = attempt
                    if result.error is not None:
                        out.status, out.reason, out.detail = self._failure_status(result.error)
                    elif rec.id in result.answers:
                        out.status, out.label, out.reason, out.detail = "labelled", result.answers[rec.id], "", ""
                        if self.cache is not None:
                            self.cache.put(self.config.model, self.prompt.version, text_hash(rec.text), out.label)
                    else:
                        out.status = "invalid"
                        out.reason, out.detail = result.bad.get(rec.id, ("llm_missing_answer", "no answer for this id"))
                        retry.append(rec)
            todo = retry
        return outcomes

    @staticmethod
    def _failure_status(error: LLMError) -> tuple[str, str, str]:
        if isinstance(error, BadRequest):
            return "invalid", "llm_bad_request", str(error)
        return "deferred", error.status, str(error)

    @staticmethod
    def _attribute(chunk: Sequence[PromptRecord], completion: Completion | None, outcomes: dict[str, Answer]) -> None:
        """Share one request's tokens and cost evenly among the records it asked about."""
        if completion is None:
            return
        n = len(chunk)
        prompt_q, prompt_r = divmod(completion.prompt_tokens, n)
        completion_q, completion_r = divmod(completion.completion_tokens, n)
        for i, rec in enumerate(chunk):
            out = outcomes[rec.id]
            out.prompt_tokens += prompt_q + (1 if i < prompt_r else 0)
            out.completion_tokens += completion_q + (1 if i < completion_r else 0)
            out.usd += completion.usd / n

    async def _ask(self, chunk: Sequence[PromptRecord]) -> tuple[_Round, Completion | None]:
        result = _Round()
        LLM_BATCH_RECORDS.observe(len(chunk))
        try:
            completion = await self.complete(self.prompt.messages(chunk))
        except LLMError as exc:
            result.error = exc
            return result, None
        try:
            pairs = parse_answer(completion.content)
        except MalformedAnswer as exc:
            LLM_REQUESTS.labels("malformed").inc()
            for rec in chunk:
                result.bad[rec.id] = ("llm_malformed", str(exc))
            return result, completion
        wanted = {rec.id for rec in chunk}
        seen: dict[str, set[str]] = {}
        for rid, raw in pairs:
            if rid in wanted:
                seen.setdefault(rid, set()).add(raw)
        for rid, raws in seen.items():
            valid = {self._labels.get(normalise(raw)) for raw in raws}
            if len(raws) == 1 and None not in valid:
                result.answers[rid] = valid.pop()  # type: ignore[assignment]
            elif None in valid:
                bad = sorted(r for r in raws if normalise(r) not in self._labels)
                result.bad[rid] = ("llm_invalid_label", f"label {bad[0]!r} is not one of {self.prompt.labels}"[:300])
            else:
                result.bad[rid] = ("llm_conflicting_answers", f"answered {sorted(raws)} for one id")
        return result, completion


def _error_message(body: str) -> str:
    try:
        doc = json.loads(body)
        message = doc.get("error", {}).get("message") if isinstance(doc.get("error"), dict) else doc.get("error")
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return body[:300]
