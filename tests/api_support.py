"""Helpers shared by the API tests: keys, a transaction body, an app on custom settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from fraudapp.main import create_app
from fraudapp.settings import Settings

from .conftest import wait_until

SCORE = {"X-API-Key": "score-key"}
ANALYST = {"X-API-Key": "analyst-key"}
ADMIN = {"X-API-Key": "admin-key"}
KEYS = {"score-key": ["score"], "analyst-key": ["analyst"], "admin-key": ["admin"]}


def transaction(tx_id: str, **fields: Any) -> dict[str, Any]:
    body = {"transaction_id": tx_id, "customer_id": "C1", "terminal_id": "T1", "amount": 42.5}
    return body | fields


@asynccontextmanager
async def running_app(
    settings: Settings, *, wait_ready: bool = True, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """An app on `settings`, started (and ready), with an httpx client whose `runtime` is the
    lifespan's Runtime. `raise_app_exceptions=False` gets the 500 answer of an unexpected error
    instead of the exception Starlette re-raises after answering."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.runtime = manager._state["runtime"]  # type: ignore[attr-defined]
            if wait_ready:
                await wait_until(lambda: _ready(client), within=120)
            yield client


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200
