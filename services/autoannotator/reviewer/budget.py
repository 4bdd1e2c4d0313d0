"""Spend accounting and limits: every response's ``usage`` priced by ``llm.prices``.

Two limits (``reviewer.budget``): ``max_usd_per_hour`` over a sliding one-hour window and
``max_usd_total``. When one is reached no further request is sent: the reviewer pauses
consumption and holds what it has consumed, and resumes when the window has slid far enough.
Requests already in flight when the limit is crossed still complete, so the spend can exceed a
limit by at most ``concurrency`` requests. Spend is persisted (SQLite) when a path is given, so
a restart does not reset the total or the window.

With a :class:`~autoannotator.reviewer.spend.SpendLedger` the limits are the fleet's: every
replica's spend, read from the ``spend`` topic, counts (then the topic, not SQLite, keeps it).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from autoannotator.config import BudgetConfig, LLMPrice
from autoannotator.exceptions import ConfigError
from autoannotator.reviewer.exceptions import BudgetExhausted
from autoannotator.reviewer.metrics import (
    BUDGET_LIMIT,
    BUDGET_STATE,
    LLM_COST,
    LLM_TOKENS,
    SPEND_TOTAL,
    SPEND_WINDOW,
)
from autoannotator.reviewer.spend import BUCKET_S, SpendLedger

WINDOW_S = 3600.0


def require_price(limits: BudgetConfig, prices: dict[str, LLMPrice], model: str) -> None:
    """Raise :class:`ConfigError` when spend limits are set but ``model`` has no price (they would never bite)."""
    if (limits.max_usd_per_hour or limits.max_usd_total) and model not in prices:
        raise ConfigError(f"reviewer.llm.prices: no price for model {model!r}, but reviewer.budget sets a spend limit")


class Budget:
    """Prices usage, keeps the spend window and total, and says whether another request may go."""

    def __init__(
        self,
        limits: BudgetConfig,
        prices: dict[str, LLMPrice],
        *,
        path: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        ledger: SpendLedger | None = None,
    ) -> None:
        self.limits = limits
        self.prices = prices
        self._clock = clock
        self._lock = threading.Lock()
        self._window: deque[tuple[float, float]] = deque()
        self._total_usd = 0.0
        self.ledger = ledger
        self._db: sqlite3.Connection | None = None
        if path is not None and ledger is None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS spend (ts REAL NOT NULL, usd REAL NOT NULL)")
            self._db.commit()
            self._total_usd = self._db.execute("SELECT COALESCE(SUM(usd), 0) FROM spend").fetchone()[0]
            since = clock() - WINDOW_S
            self._window.extend(self._db.execute("SELECT ts, usd FROM spend WHERE ts > ? ORDER BY ts", (since,)))
        # Only configured limits get a series: "budget remaining" = limit - spend exists only where a limit does.
        for window, limit in (("hour", limits.max_usd_per_hour), ("total", limits.max_usd_total)):
            if limit is not None:
                BUDGET_LIMIT.labels(window).set(limit)
        self._publish()

    @property
    def total_usd(self) -> float:
        """USD spent in all (by the whole fleet, with a ledger)."""
        return self.ledger.total() if self.ledger is not None else self._total_usd

    def require_price(self, model: str) -> None:
        """Refuse to start with spend limits but no price for the model (limits would never bite)."""
        require_price(self.limits, self.prices, model)

    def price(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for this usage (0 when the model has no price)."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6

    def charge(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Account one response's usage; returns its cost in USD."""
        usd = self.price(model, prompt_tokens, completion_tokens)
        LLM_TOKENS.labels("prompt").inc(prompt_tokens)
        LLM_TOKENS.labels("completion").inc(completion_tokens)
        LLM_COST.inc(usd)
        now = self._clock()
        if self.ledger is not None:
            self.ledger.record(usd, now)
            self._publish()
            return usd
        with self._lock:
            self._total_usd += usd
            self._window.append((now, usd))
            if self._db is not None:
                self._db.execute("INSERT INTO spend VALUES (?, ?)", (now, usd))
                self._db.commit()
        self._publish()
        return usd

    def window_usd(self) -> float:
        """USD spent in the last hour."""
        if self.ledger is not None:
            return self.ledger.window(self._clock())
        with self._lock:
            self._slide(self._clock())
            return sum(usd for _, usd in self._window)

    def blocked_until(self) -> float | None:
        """None while spending is allowed; else the time it will be again (``math.inf``: never)."""
        now = self._clock()
        if self.limits.max_usd_total is not None and self.total_usd >= self.limits.max_usd_total:
            return math.inf
        limit = self.limits.max_usd_per_hour
        if limit is None:
            return None
        # (when it slides out of the window, usd), oldest first
        if self.ledger is not None:
            entries = [(start + BUCKET_S + WINDOW_S, usd) for start, usd in self.ledger.buckets(now)]
        else:
            with self._lock:
                self._slide(now)
                entries = [(ts + WINDOW_S, usd) for ts, usd in self._window]
        spent = sum(usd for _, usd in entries)
        if spent < limit:
            return None
        # The window allows spending again once enough of its oldest entries have slid out.
        for leaves, usd in entries:
            spent -= usd
            if spent < limit:
                return leaves
        return now

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` when no request may be sent now."""
        until = self.blocked_until()
        self._publish(until)
        if until is not None:
            which = "max_usd_total" if until == math.inf else "max_usd_per_hour"
            raise BudgetExhausted(
                f"reviewer.budget.{which} reached (last hour ${self.window_usd():.4f}, total ${self.total_usd:.4f})",
                None if until == math.inf else until,
            )

    @property
    def state(self) -> int:
        """0: ok, 1: hourly limit reached, 2: total reached (the gauge's values)."""
        until = self.blocked_until()
        return 0 if until is None else 2 if until == math.inf else 1

    def _publish(self, until: float | None = ...) -> None:  # type: ignore[assignment]
        if until is ...:
            until = self.blocked_until()
        BUDGET_STATE.set(0 if until is None else 2 if until == math.inf else 1)
        SPEND_WINDOW.set(self.window_usd())
        SPEND_TOTAL.set(self.total_usd)

    def _slide(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - WINDOW_S:
            self._window.popleft()

    def close(self) -> None:
        """Close the spend store."""
        if self._db is not None:
            self._db.close()
            self._db = None
