"""Rendering for the dashboard: the Jinja2 environment, its filters, and the error pages.

Templates live in the top-level `templates/` (pages, and partials whose names start with `_`),
assets in `static/` with the vendored HTMX and Plotly under `static/vendor/`, versions in their
file names. A `FraudAppError` on a dashboard route becomes the error page, or for an HTMX request
the `_error.html` partial swapped into the page's message area.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from fraudapp.auth import Principal
from fraudapp.errors import FraudAppError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = ROOT / "templates"
STATIC_DIR = ROOT / "static"

# The vendored front-end, named with their versions (see static/vendor/).
ASSETS = {
    "htmx": "vendor/htmx-2.0.11.min.js",
    "htmx_sse": "vendor/htmx-ext-sse-2.2.4.min.js",
    "plotly": "vendor/plotly-3.7.0.min.js",
}


class LoginRequired(FraudAppError):
    """The page or action needs an analyst's (or admin's) login."""

    status = 401
    error = "login_required"


class Forbidden(FraudAppError):
    """Logged in, but the key lacks the scope, or the request is not from this origin."""

    status = 403
    error = "forbidden"


def _money(amount: Any, currency: str | None = None) -> str:
    if amount is None:
        return "–"
    text = f"{float(amount):,.2f}"
    return f"{text} {currency}" if currency else text


def _when(value: Any) -> str:
    """A timestamp (datetime, ISO text or epoch seconds) as `YYYY-MM-DD HH:MM:SS` UTC."""
    moment = _as_datetime(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "–"


def _clock(value: Any) -> str:
    moment = _as_datetime(value)
    return moment.strftime("%H:%M:%S") if moment else "–"


def _ago(value: Any, suffix: str = " ago") -> str:
    moment = _as_datetime(value)
    if moment is None:
        return "–"
    seconds = (datetime.now(UTC) - moment).total_seconds()
    if seconds < 1:
        return "now"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}{suffix}"
    return f"{int(seconds)} s{suffix}"


def _as_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    return datetime.fromisoformat(str(value))


def _number(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{float(value):,.{digits}f}"


def _percent(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{100.0 * float(value):.{digits}f} %"


def risk_class(score: Any, review_score: int = 70, decline_score: int = 90) -> str:
    """CSS class of a risk score against the policy's thresholds: high, medium or low."""
    value = int(score or 0)
    if value >= decline_score:
        return "risk-high"
    if value >= review_score:
        return "risk-medium"
    return "risk-low"


def _feature_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    number = float(value)
    if number == int(number) and abs(number) < 1e9:
        return f"{int(number):,}"
    return f"{number:,.4g}" if abs(number) < 1e4 else f"{number:,.0f}"


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters.update(
    money=_money,
    when=_when,
    clock=_clock,
    ago=_ago,
    number=_number,
    percent=_percent,
    risk=risk_class,
    feature_value=_feature_value,
)
templates.env.globals["assets"] = ASSETS


def current_viewer(request: Request) -> Principal | None:
    """The logged-in principal of this request's session, if any."""
    if "session" not in request.scope:
        return None
    data = request.session.get("principal")
    if not isinstance(data, dict):
        return None
    return Principal(str(data["name"]), frozenset(data["scopes"]))


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render `name` with the viewer and the request in the context."""
    values: dict[str, Any] = {"viewer": current_viewer(request)}
    values.update(context or {})
    response = templates.TemplateResponse(
        request, name, values, status_code=status_code, headers=headers
    )
    assert isinstance(response, HTMLResponse)
    return response


def error_response(request: Request, exc: FraudAppError) -> Response:
    """The dashboard's answer to a `FraudAppError`: a page, or a partial for HTMX."""
    if isinstance(exc, LoginRequired):
        target = f"/login?next={request.url.path}"
        if is_htmx(request):
            # A partial cannot show the login form: send the whole page there.
            return Response(status_code=204, headers={"HX-Redirect": target})
        if request.method == "GET":
            return RedirectResponse(target, status_code=303)
    context = {"status": exc.status, "error": exc.error, "detail": exc.detail}
    headers: dict[str, str] = {}
    retry = getattr(exc, "retry_after_seconds", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    if is_htmx(request):
        headers.update({"HX-Retarget": "#messages", "HX-Reswap": "innerHTML"})
        return render(request, "_error.html", context, status_code=exc.status, headers=headers)
    return render(request, "error.html", context, status_code=exc.status, headers=headers)
