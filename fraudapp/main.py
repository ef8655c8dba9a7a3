"""The ASGI application: wiring only (routers, middleware, handlers, static files)."""

from __future__ import annotations

from fastapi import FastAPI

from fraudapp import health
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
    app.add_middleware(CleanStartupErrors)
    return app


app = create_app()
