"""Named errors of the reviewer, one per failure class of the LLM endpoint and the review page."""

from __future__ import annotations

from autoannotator.exceptions import AutoAnnotatorError


class ReviewerError(AutoAnnotatorError):
    """Base of the reviewer's errors."""


class LLMError(ReviewerError):
    """A chat-completions request did not produce a usable response.

    ``status`` is the short label used on ``autoannotator_llm_requests_total{status}``.
    """

    status = "error"


class LLMConnectionError(LLMError):
    """The endpoint could not be reached (refused, reset, DNS)."""

    status = "connection_error"


class LLMTimeout(LLMError):
    """No complete response within ``llm.timeout_s``."""

    status = "timeout"


class RateLimited(LLMError):
    """HTTP 429; ``retry_after_s`` is what the server asked for (None when it did not say)."""

    status = "rate_limited"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerError(LLMError):
    """HTTP 5xx, or a 200 whose envelope is not a chat completion."""

    status = "server_error"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BadRequest(LLMError):
    """HTTP 4xx other than 401/403/429: this request will never succeed as it is."""

    status = "bad_request"


class AuthenticationError(LLMError):
    """HTTP 401/403: the API key is missing, wrong or not allowed."""

    status = "auth_error"


class CircuitOpen(LLMError):
    """The breaker is open: the endpoint failed repeatedly, no request is sent until ``retry_at``."""

    status = "circuit_open"

    def __init__(self, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class BudgetExhausted(LLMError):
    """The spend budget forbids another request until ``retry_at`` (None: never, total reached)."""

    status = "budget"

    def __init__(self, message: str, retry_at: float | None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class MalformedAnswer(ReviewerError):
    """The completion's content is not the JSON list of ``{"id", "label"}`` that was demanded."""


class ReviewQueueError(ReviewerError):
    """A human-review action that the queue refuses (unknown record, label not in the set, ...)."""
