"""The live dashboard: server-rendered pages with HTMX and Plotly, served by the app itself.

Reads what the pipeline wrote (PostgreSQL through `store.reads` and `store.charts`, Redis for
high-risk customers, the engine's live metrics and feed) and acts through `operations`, like the
JSON API. `pages` holds the pages and actions, `live` the overview's live parts (KPIs, the SSE
feed, charts, simulator), `session` the login, `figures` the Plotly figures, `views` rendering.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fraudapp.dashboard import live, pages, session
from fraudapp.dashboard.session import DashboardSessions
from fraudapp.dashboard.views import STATIC_DIR, error_response
from fraudapp.errors import FraudAppError, InvalidInput, NotFound

Handler = Callable[[Request, Exception], Response | Awaitable[Response]]

router = APIRouter(include_in_schema=False)
router.include_router(session.router)
router.include_router(live.router)
router.include_router(pages.router)


def is_dashboard_request(request: Request) -> bool:
    """Everything outside the JSON API, the health probes and the metrics is the dashboard's."""
    path = request.url.path
    return not path.startswith(("/api/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi"))


class _HTTPError(FraudAppError):
    """An `HTTPException` (unknown page, wrong method) in the dashboard's terms."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = {404: "not_found", 405: "method_not_allowed"}.get(status, "error")


async def handle_error(request: Request, exc: Exception) -> Response:
    """The dashboard's boundary handler: an HTML page, or a partial for an HTMX request."""
    if isinstance(exc, FraudAppError):
        return error_response(request, exc)
    if isinstance(exc, RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
        return error_response(request, InvalidInput(f"missing or invalid: {fields}"))
    if isinstance(exc, StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(request, NotFound(f"there is no page at {request.url.path}"))
        return error_response(request, _HTTPError(exc.status_code, str(exc.detail)))
    raise exc


def add_error_handlers(app: FastAPI) -> None:
    """Answer dashboard requests' errors with HTML, leaving the handlers registered before
    (the JSON API's) to every other path. Call it after the API's `add_error_handlers`."""
    for exc_class in (FraudAppError, RequestValidationError, StarletteHTTPException):
        previous = app.exception_handlers.get(exc_class)
        app.add_exception_handler(exc_class, _dispatch(previous))


def _dispatch(previous: Handler | None) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if is_dashboard_request(request) or previous is None:
            return await handle_error(request, exc)
        response = previous(request, exc)
        return await response if inspect.isawaitable(response) else response

    return handler


__all__ = [
    "STATIC_DIR",
    "DashboardSessions",
    "add_error_handlers",
    "handle_error",
    "is_dashboard_request",
    "router",
]
