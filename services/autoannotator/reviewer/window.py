"""The reviewer's in-flight window: LLM requests run on an event loop of their own, off the poll loop.

The shared Kafka loop is synchronous and must turn every few hundred milliseconds whatever the
LLM does. :class:`RequestWindow` runs an asyncio event loop in a daemon thread; the poll loop
:meth:`~RequestWindow.submit`\\ s a chunk of records (one request's worth) without waiting and
picks up finished chunks with :meth:`~RequestWindow.finished` on a later turn. At most ``slots``
chunks are out at once, so the number of requests in flight is bounded by ``slots`` (each chunk
sends one request at a time, its retries and re-asks included). A slow or failing request holds
only the records of its own chunk.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Finished(Generic[T, R]):
    """A chunk whose request is done: its items and the result, or the error that ended it."""

    items: list[T]
    result: R | None
    error: BaseException | None


class RequestWindow(Generic[T, R]):
    """A bounded number of coroutines in flight on a background event loop; a context manager."""

    def __init__(self, work: Callable[[Sequence[T]], Awaitable[R]], slots: int, *, name: str = "llm-window") -> None:
        self._work = work
        self.slots = slots
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._in_flight: set[concurrent.futures.Future[R]] = set()
        self._done: collections.deque[Finished[T, R]] = collections.deque()
        self._lock = threading.Lock()
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def free(self) -> int:
        """How many more chunks may be submitted now."""
        with self._lock:
            return self.slots - len(self._in_flight)

    @property
    def in_flight(self) -> int:
        """Chunks submitted whose result has not been picked up by :meth:`finished` yet."""
        with self._lock:
            return len(self._in_flight) + len(self._done)

    def submit(self, items: Sequence[T]) -> None:
        """Start ``work(items)`` on the event loop; never blocks (the caller checks :attr:`free`)."""
        chunk = list(items)
        future = asyncio.run_coroutine_threadsafe(self._call(chunk), self._loop)
        with self._lock:
            self._in_flight.add(future)

        def done(fut: concurrent.futures.Future[R]) -> None:
            try:
                finished = Finished(chunk, fut.result(), None)
            except BaseException as exc:  # handed to the poll loop, which decides what it means
                finished = Finished(chunk, None, exc)
            with self._lock:
                self._in_flight.discard(fut)
                self._done.append(finished)

        future.add_done_callback(done)

    async def _call(self, chunk: list[T]) -> R:
        return await self._work(chunk)

    def finished(self) -> list[Finished[T, R]]:
        """Chunks finished since the last call (never blocks)."""
        with self._lock:
            out = list(self._done)
            self._done.clear()
        return out

    def call(self, coro: Awaitable[object], timeout_s: float = 10.0) -> object:
        """Run one coroutine on the window's loop and wait for it (start-up and shutdown only)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)  # type: ignore[arg-type]

    def close(self, cleanup: Awaitable[object] | None = None, timeout_s: float = 5.0) -> None:
        """Cancel what is in flight (its records stay uncommitted), run ``cleanup``, stop the thread."""
        with self._lock:
            pending = list(self._in_flight)
        for fut in pending:
            fut.cancel()
        if cleanup is not None and self._loop.is_running():
            try:
                self.call(cleanup, timeout_s)
            except Exception:
                log.exception("reviewer: cleanup of the request window failed")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> RequestWindow[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
