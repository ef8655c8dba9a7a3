"""The JSON API under `/api/v1`, for integrations; its OpenAPI schema is served at `/docs`.

Between HTTP and the engine: routes validate at the edge (pydantic), check the API key's scope
(`fraudapp.auth`), read through `fraudapp.store.reads` and change state through
`fraudapp.operations`. Errors share one shape, `{"error": ..., "detail": ...}`
(`fraudapp.api.responses`). `main.create_app` includes `router` and `metrics_router` and calls
`add_error_handlers`.
"""

from __future__ import annotations

from fastapi import APIRouter

from fraudapp.api import control, insights, transactions
from fraudapp.api.control import metrics_router
from fraudapp.api.responses import add_error_handlers

router = APIRouter(prefix="/api/v1")
router.include_router(transactions.router)
router.include_router(insights.router)
router.include_router(control.router)

__all__ = ["add_error_handlers", "metrics_router", "router"]
