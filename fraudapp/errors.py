"""The one error family of fraudapp and what each member means to a client.

Code below the API raises these; the boundary handlers in `main` turn them into
`{"error": ..., "detail": ...}` JSON (or an HTML page for the dashboard).
"""

from __future__ import annotations


class FraudAppError(Exception):
    """Base class: `status` is the HTTP status, `error` a stable machine-readable code."""

    status = 500
    error = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(FraudAppError):
    status = 404
    error = "not_found"


class Conflict(FraudAppError):
    status = 409
    error = "conflict"


class InvalidInput(FraudAppError):
    status = 422
    error = "invalid_input"


class NotReady(FraudAppError):
    """A resource the request needs (the model, the pipeline) is not ready yet."""

    status = 503
    error = "not_ready"

    def __init__(self, detail: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class Saturated(NotReady):
    """The ingest queue is full: the client should retry later."""

    error = "saturated"


class ServiceUnreachable(FraudAppError):
    """A configured PostgreSQL or Redis cannot be reached at startup."""

    error = "service_unreachable"
