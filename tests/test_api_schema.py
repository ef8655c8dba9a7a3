"""Property-based contract test: schemathesis sends generated requests to every operation of the
OpenAPI schema (valid and invalid ones) and checks there is no server error and every response —
status, content type, headers, body — is one the schema declares."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fraudapp import store
from fraudapp.main import create_app
from fraudapp.settings import Settings

from .api_support import KEYS, running_app
from .conftest import make_settings

CHECKS = (
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)


# The schema comes from the app object itself, so collecting the tests needs no server; the
# requests go over HTTP to a real server on the test services (`server_url`).
schema = schemathesis.openapi.from_dict(create_app().openapi())
# Starting the simulator at a generated rate (up to 100,000 tx/s) would load the machine for the
# rest of the run; its contract is tested in test_api_control.
schema = schema.exclude(path="/api/v1/simulator", method="POST")


@pytest.fixture(scope="module")
def server_url(
    database_url: str, redis_url: str, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """uvicorn serving the app in a thread on a private copy of the model registry."""
    data_dir = tmp_path_factory.mktemp("schema")
    registry = data_dir / "mlflow" / "mlflow.db"
    registry.parent.mkdir()
    shutil.copy(tracking_uri.removeprefix("sqlite:///"), registry)
    settings = make_settings(
        database_url,
        redis_url,
        data_dir,
        mlflow_tracking_uri=f"sqlite:///{registry}",
        api_keys=KEYS,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not get ready"
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(60)


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_response_matches_the_schema(case: Any, server_url: str) -> None:
    case.call_and_validate(base_url=server_url, headers={"X-API-Key": "admin-key"}, checks=CHECKS)


async def test_readyz_answers_503_as_the_schema_says(
    app_settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> None:
    # The generated requests above only meet a ready app; a 503 needs a database that is away.
    assert app_settings.database_url is not None
    closed = await store.create_pool(app_settings.database_url, setting="test", timeout_seconds=5)
    await closed.close()
    async with running_app(app_settings) as client:
        runtime = client.runtime  # type: ignore[attr-defined]
        healthy, runtime.pool = runtime.pool, closed
        try:
            response = await client.get("/readyz")
        finally:
            runtime.pool = healthy
    assert response.status_code == 503
    assert response.json()["components"]["database"]["ready"] is False
    conformance = [check for check in CHECKS if check is not schemathesis.checks.not_a_server_error]
    schema["/readyz"]["GET"].Case().validate_response(response, checks=conformance)
