"""Test fixtures against real services.

With FRAUDAPP_TEST_DATABASE_URL / FRAUDAPP_TEST_REDIS_URL the tests use those servers; otherwise
they start the embedded PostgreSQL and Redis once per session. Each xdist worker gets its own
database (built by running the migrations) and its own Redis db number.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from fraudapp import store
from fraudapp.embedded import embedded_postgres, embedded_redis
from fraudapp.settings import Settings

TABLES = ("list_entry", "simulation_truth", "label", "decision", "transaction")


def _worker_index(worker_id: str) -> int:
    match = re.search(r"(\d+)$", worker_id)
    return int(match.group(1)) if match else 0


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def _with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("db="))
        return urlunsplit(parts._replace(query=f"{query}&db={db}" if query else f"db={db}"))
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture(scope="session")
def worker_id_index(request: pytest.FixtureRequest) -> int:
    worker = getattr(request.config, "workerinput", {}).get("workerid", "master")
    return _worker_index(worker)


@pytest.fixture(scope="session")
def service_urls(
    tmp_path_factory: pytest.TempPathFactory, worker_id_index: int
) -> Iterator[tuple[str, str]]:
    """(database URL of a fresh migrated database for this worker, Redis URL of its db)."""
    with ExitStack() as stack:
        admin_url = os.environ.get("FRAUDAPP_TEST_DATABASE_URL")
        redis_url = os.environ.get("FRAUDAPP_TEST_REDIS_URL")
        if not admin_url or not redis_url:
            data_dir = tmp_path_factory.mktemp("services")
            admin_url = admin_url or stack.enter_context(embedded_postgres(data_dir))
            redis_url = redis_url or stack.enter_context(embedded_redis(data_dir))
        database = f"fraudapp_test_{worker_id_index}"
        asyncio.run(_recreate_database(admin_url, database))
        url = _with_database(admin_url, database)
        store.migrate(url)
        yield url, _with_redis_db(redis_url, 1 + worker_id_index)


async def _recreate_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> str:
    return service_urls[0]


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> str:
    return service_urls[1]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the worker's database, emptied before the test."""
    pool = await store.create_pool(database_url, setting="test", timeout_seconds=10)
    await pool.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def db(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection inside a transaction that is rolled back after the test."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            yield conn
        finally:
            await tx.rollback()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for an app on the test services, simulator off unless a test turns it on."""
    return make_settings(database_url, redis_url, tmp_path)


def make_settings(database_url: str, redis_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": data_dir,
        "simulator_enabled": False,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


# --- the app, in-process, on the test services ------------------------------------------------


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An MLflow store holding one small trained champion, shared by the session's apps."""
    from fraudapp.model import train_first_model

    directory = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    train_first_model(tracking_uri=uri, days=21, customers=3000, seed=3, delay_days=7)
    return uri


async def wait_until(predicate: Any, *, within: float = 60.0, interval: float = 0.05) -> Any:
    """Poll an async (or plain) predicate until it returns something truthy, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(interval)


@pytest.fixture
async def app_settings(
    database_url: str, redis_url: str, tracking_uri: str, tmp_path: Path
) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        tmp_path,
        mlflow_tracking_uri=tracking_uri,
        api_keys={"score-key": ["score"], "analyst-key": ["analyst"], "admin-key": ["admin"]},
    )


@pytest.fixture
async def app_client(
    app_settings: Settings, pool: asyncpg.Pool, redis_client: aioredis.Redis
) -> AsyncIterator[Any]:
    """An httpx client on a started app whose pipeline is ready (simulator off)."""
    import httpx
    from asgi_lifespan import LifespanManager

    from fraudapp.main import create_app

    app = create_app(app_settings)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def ready() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await wait_until(ready, within=120)
            client.app = app  # type: ignore[attr-defined]
            # The lifespan's Runtime, for tests that reach past HTTP (pipeline, engine).
            client.runtime = manager._state["runtime"]  # type: ignore[attr-defined]
            yield client
