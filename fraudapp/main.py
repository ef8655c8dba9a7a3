"""The ASGI application: wiring only (routers, middleware, handlers, static files)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from fraudapp import api, dashboard, health
from fraudapp.api.fastpath import DecisionFastPath
from fraudapp.lifespan import CleanStartupErrors, make_lifespan
from fraudapp.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="fraudapp",
        version="0.1.0",
        summary="Real-time fraud scoring: decisions with reasons, ingest, analytics and labels.",
        lifespan=make_lifespan(settings),
    )
    app.include_router(health.router)
    app.include_router(api.metrics_router)
    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC_DIR), name="static")
    api.add_error_handlers(app)
    dashboard.add_error_handlers(app)
    app.add_middleware(dashboard.DashboardSessions)
    app.add_middleware(DecisionFastPath)
    app.add_middleware(CleanStartupErrors)
    return app


app = create_app()
