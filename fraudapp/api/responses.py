"""How the API answers: JSON bytes by orjson, and the one error shape `{"error", "detail"}`.

The handlers here turn every failure a request can meet — a `FraudAppError` from below, a
validation error at the edge, an `HTTPException` (auth, 404, 405, 413) — into that shape, with
`Retry-After` on a 503, and a 422 naming each field and what is wrong with it. Anything else is a
bug: a 500 that logs the traceback and never shows the exception's text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fraudapp.errors import FraudAppError, NotReady

log = logging.getLogger(__name__)

ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    500: "internal_error",
    503: "not_ready",
}


class JSONBytes(Response):
    """A JSON response serialised by orjson (datetimes as ISO 8601, numpy scalars as numbers)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def error_response(
    status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
) -> JSONBytes:
    return JSONBytes({"error": error, "detail": detail}, status_code=status, headers=headers)


async def fraudapp_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FraudAppError)
    headers = None
    if isinstance(exc, NotReady):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    if exc.status >= 500 and not isinstance(exc, NotReady):
        log.error("api.error path=%s error=%s detail=%s", request.url.path, exc.error, exc.detail)
    return error_response(exc.status, exc.error, exc.detail, headers)


_UNPARSABLE_BODY = "There was an error parsing the body"


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
        # FastAPI's answer to a body it cannot decode: the same 422 as for broken JSON.
        return error_response(422, "invalid_input", "body: is not valid JSON (cannot be decoded)")
    error = ERROR_CODES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == 503:
        headers.setdefault("Retry-After", "1")
    return error_response(exc.status_code, error, str(exc.detail), headers)


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_input", describe_errors(exc.errors()))


_UNEXPECTED = (
    "An unexpected error happened while handling the request; it is logged on the server."
    " Retry, and report it if it persists."
)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """The last resort (Starlette's `ServerErrorMiddleware` calls it, then re-raises)."""
    log.error(
        "api.unexpected_error method=%s path=%s error=%s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc_info=exc,
    )
    return error_response(500, ERROR_CODES[500], _UNEXPECTED)


def describe_errors(errors: Sequence[Any]) -> str:
    """`body.amount: must be greater than 0; query.limit: must be ...` — one clause per error."""
    return "; ".join(_describe(error) for error in errors[:10]) or "the request is not valid"


# pydantic says "Input should be …", "String should match …", "Decimal input should have …".
_SHOULD = re.compile(r"^(?:\w+ )?(?:input )?should ", re.IGNORECASE)
_PREFIXES = ("Value error, ", "Assertion failed, ")


def _describe(error: Mapping[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    kind = error.get("type", "")
    message = str(error.get("msg", "is not valid"))
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    elif kind == "json_invalid":
        message = f"is not valid JSON ({error.get('ctx', {}).get('error', 'syntax error')})"
    else:
        for prefix in _PREFIXES:
            message = message.removeprefix(prefix)
        message = _SHOULD.sub("must ", message)
    return f"{location}: {message}" if location else message


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FraudAppError, fraudapp_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


class ErrorOut(BaseModel):
    """Every error: a stable machine-readable code and a sentence saying what to fix."""

    error: str = Field(description="stable machine-readable code, e.g. invalid_input")
    detail: str = Field(description="what went wrong and what to do about it")


_ERROR_TEXT: dict[int, str] = {
    401: "No API key, or not a valid one",
    403: "The API key lacks the scope this needs",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Too many transactions in one request",
    422: "Invalid input: each field and what is wrong with it",
    503: "Not ready (model loading, pipeline starting) or saturated; see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route may answer with."""
    return {code: {"model": ErrorOut, "description": _ERROR_TEXT[code]} for code in codes}
