"""Who is looking at the dashboard: the login form, the signed session cookie and the checks.

An analyst logs in with an API key of scope analyst or admin; the session cookie (Starlette's,
signed with `FRAUDAPP_SESSION_SECRET` or a secret generated once under the data dir) keeps the
key's name and scopes, never the key. Reading follows `FRAUDAPP_READ_REQUIRES_KEY`. A state-
changing action is a POST from this origin (its Origin header is checked: the cookie alone is
not proof of intent) by a session holding the scope the matching API endpoint needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from fraudapp.auth import Principal, read_or_create_key_file
from fraudapp.dashboard.views import Forbidden, LoginRequired, current_viewer, render
from fraudapp.deps import RuntimeDep
from fraudapp.settings import Settings

SESSION_COOKIE = "fraudapp_session"
SESSION_MAX_AGE_SECONDS = 8 * 3600
SECRET_FILE_NAME = "session_secret"
LOGIN_SCOPES = frozenset({"analyst", "admin"})
# The JSON API authenticates by API key, never by cookie: parsing and re-signing a session
# cookie there would only cost time on the hot path (POST /api/v1/decisions).
_SESSIONLESS_PATHS = ("/api/", "/metrics", "/healthz", "/readyz")


def session_secret(settings: Settings) -> str:
    """The configured secret, else one generated once under the data dir (mode 0600)."""
    if settings.session_secret:
        return settings.session_secret
    return read_or_create_key_file(settings.data_dir / SECRET_FILE_NAME)


class DashboardSessions:
    """Starlette's `SessionMiddleware`, keyed with the running app's secret.

    The secret comes from the settings the lifespan resolved, known only once the app has
    started, so the inner middleware is built on the first request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._sessions: SessionMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or "runtime" not in scope.get("state", {})
            or scope["path"].startswith(_SESSIONLESS_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        if self._sessions is None:
            settings: Settings = scope["state"]["runtime"].settings
            self._sessions = SessionMiddleware(
                self.app,
                secret_key=session_secret(settings),
                session_cookie=SESSION_COOKIE,
                max_age=SESSION_MAX_AGE_SECONDS,
                same_site="lax",
            )
        await self._sessions(scope, receive, send)


def reader(request: Request) -> Principal | None:
    """Router dependency of every dashboard page: a login is needed when reads need a key."""
    viewer = current_viewer(request)
    if viewer is None and request.state.runtime.settings.read_requires_key:
        raise LoginRequired("this dashboard needs a login with an API key")
    return viewer


def same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this site (Origin, else Referer, matches)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    theirs = urlsplit(source)
    ours = urlsplit(str(request.base_url))
    return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)


def acting(scope: str) -> Callable[[Request], Principal]:
    """A dependency for an action needing `scope`: same origin, logged in, scope held."""

    def dependency(request: Request) -> Principal:
        if not same_origin(request):
            raise Forbidden("actions must come from a page of this dashboard")
        viewer = current_viewer(request)
        if viewer is None:
            raise LoginRequired("log in with an analyst or admin API key to do this")
        if not viewer.allows(scope):
            raise Forbidden(f"the key {viewer.name} lacks the {scope!r} scope this needs")
        return viewer

    return dependency


ViewerDep = Annotated[Principal | None, Depends(reader)]
AnalystDep = Annotated[Principal, Depends(acting("analyst"))]
AdminDep = Annotated[Principal, Depends(acting("admin"))]

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path of this site: never an absolute URL another site could supply."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return render(request, "login.html", {"next": _safe_next(next), "message": None})


@router.post("/login", response_model=None)
async def login(
    request: Request,
    runtime: RuntimeDep,
    api_key: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    target = _safe_next(next)
    if not same_origin(request):
        raise Forbidden("log in from this dashboard's login page")
    principal = runtime.api_keys.identify(api_key.strip())
    message = None
    if principal is None:
        message = "That API key is not valid."
    elif not principal.scopes & LOGIN_SCOPES:
        message = f"The key {principal.name} has no analyst or admin scope."
    if message is not None:
        context: dict[str, Any] = {"next": target, "message": message}
        return render(request, "login.html", context, status_code=401)
    assert principal is not None
    request.session.clear()
    request.session["principal"] = {
        "name": principal.name,
        "scopes": sorted(principal.scopes),
        "since": int(time.time()),
    }
    return RedirectResponse(target, status_code=303)


@router.post("/logout", response_model=None)
async def logout(request: Request) -> Response:
    if not same_origin(request):
        raise Forbidden("log out from this dashboard")
    request.session.clear()
    return RedirectResponse("/", status_code=303)
