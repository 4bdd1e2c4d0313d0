"""The shipped price table: USD per million tokens for well-known chat models, by model name.

``plan`` fills ``reviewer.llm.prices`` from it; ``check-config`` warns when the configured model
has no price (spend metrics and the budget would then read zero). These are the providers' list
prices for standard (non-batch, uncached) requests as published when this table was written;
providers change them, so a config's own ``prices`` entry always wins.
"""

from __future__ import annotations

# model name -> (input USD / Mtok, output USD / Mtok)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "claude-3-5-haiku-latest": (0.80, 4.00),
    "claude-3-5-sonnet-latest": (3.00, 15.00),
}


def price_for(model: str) -> dict[str, float] | None:
    """``{"input_per_mtok": ..., "output_per_mtok": ...}`` for a known model name, else None."""
    found = PRICES.get(model.strip().lower())
    if found is None:
        return None
    return {"input_per_mtok": found[0], "output_per_mtok": found[1]}
