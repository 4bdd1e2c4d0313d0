"""The one way tests wait for something that happens in another thread or process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float = 30.0, what: str = "the condition",
               step_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fails the test (``AssertionError`` naming ``what``) when ``timeout_s`` passes first, so a
    caller never has to remember to assert the result.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(step_s)
