"""Liveness and readiness: `/healthz` says the process answers, `/readyz` what is ready.

Readiness reports each component (database, redis, model, pipeline); the app is ready (200)
when the database, the model and the pipeline are. Redis is reported but not required: the
cache fails open.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from fraudapp import cache, store
from fraudapp.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


class ComponentOut(BaseModel):
    """One component's readiness, with what it reports about itself."""

    model_config = ConfigDict(extra="allow")

    ready: bool


class ReadinessOut(BaseModel):
    """The same body with 200 (ready) and 503 (not ready)."""

    status: Literal["ready", "not_ready"]
    components: dict[str, ComponentOut] = Field(
        description="database, redis, model and pipeline; redis has `required: false`"
    )


@router.get(
    "/readyz",
    summary="Readiness of database, redis, model and pipeline",
    response_model=ReadinessOut,
    responses={
        200: {"description": "Ready: the database, the model and the pipeline are"},
        503: {"model": ReadinessOut, "description": "Not ready: see each component"},
    },
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    components: dict[str, dict[str, Any]] = {}
    try:
        db_ok = await store.ping(runtime.pool)
    except Exception as exc:  # any failure here is the answer: the database is not ready
        components["database"] = {"ready": False, "error": f"{type(exc).__name__}: {exc}"}
    else:
        components["database"] = {"ready": db_ok, "embedded": runtime.database_embedded}
    components["redis"] = {
        "ready": await cache.ping(runtime.redis),
        "embedded": runtime.redis_embedded,
        "required": False,
    }
    components["model"] = runtime.engine.model_report()
    components["pipeline"] = runtime.engine.pipeline_report()
    required = [c for c in components.values() if c.get("required", True)]
    ready = all(c["ready"] for c in required)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "components": components},
        status_code=200 if ready else 503,
    )
