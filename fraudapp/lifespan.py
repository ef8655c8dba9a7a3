"""Startup and shutdown: every long-lived resource is created here and closed in reverse order.

settings → PostgreSQL (URL or embedded) → migrations → Redis (URL or embedded) → model (the
registry's champion, or a first model trained in the background) → feature state rebuilt from
history → scoring pipeline and simulator. The `Runtime` is handed to requests as lifespan state.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    AsyncExitStack,
    asynccontextmanager,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as aioredis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fraudapp import cache, store
from fraudapp.auth import ApiKeys, load_keys
from fraudapp.embedded import embedded_postgres, embedded_redis
from fraudapp.engine import Engine
from fraudapp.errors import FraudAppError
from fraudapp.logs import configure_logging
from fraudapp.operations import ModelJobs
from fraudapp.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Runtime:
    """What the lifespan owns and requests use."""

    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    engine: Engine
    database_embedded: bool
    redis_embedded: bool
    api_keys: ApiKeys
    models: ModelJobs = field(default_factory=ModelJobs)


async def _enter_in_thread(stack: AsyncExitStack, manager: AbstractContextManager[T]) -> T:
    """Enter a blocking context manager off the loop; exit it off the loop at shutdown."""
    value = await asyncio.to_thread(manager.__enter__)
    stack.push_async_callback(asyncio.to_thread, manager.__exit__, None, None, None)
    return value


async def open_database(stack: AsyncExitStack, settings: Settings) -> tuple[asyncpg.Pool, bool]:
    url = settings.database_url
    embedded = url is None
    if url is None:
        url = await _enter_in_thread(stack, embedded_postgres(settings.data_dir))
    pool = await store.create_pool(
        url,
        setting="FRAUDAPP_DATABASE_URL",
        timeout_seconds=settings.connect_timeout_seconds,
        max_size=4 + 2 * settings.writes_in_flight,
    )
    stack.push_async_callback(pool.close)
    await asyncio.to_thread(store.migrate, url)
    log.info("lifespan.database_ready embedded=%s url=%s", embedded, store.redact(url))
    return pool, embedded


async def open_redis(stack: AsyncExitStack, settings: Settings) -> tuple[aioredis.Redis, bool]:
    url = settings.redis_url
    embedded = url is None
    if url is None:
        url = await _enter_in_thread(stack, embedded_redis(settings.data_dir))
    client = await cache.create_redis(
        url, setting="FRAUDAPP_REDIS_URL", timeout_seconds=settings.connect_timeout_seconds
    )
    stack.push_async_callback(client.aclose)
    log.info("lifespan.redis_ready embedded=%s url=%s", embedded, url)
    return client, embedded


def make_lifespan(
    settings: Settings | None,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Runtime]]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Runtime]]:
        resolved = settings or Settings()
        configure_logging(resolved.log_level)
        resolved.data_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            pool, db_embedded = await open_database(stack, resolved)
            redis_client, redis_embedded = await open_redis(stack, resolved)
            engine = Engine(resolved, pool, redis_client)
            engine.start()
            stack.push_async_callback(engine.stop)
            runtime = Runtime(
                settings=resolved,
                pool=pool,
                redis=redis_client,
                engine=engine,
                database_embedded=db_embedded,
                redis_embedded=redis_embedded,
                api_keys=load_keys(resolved),
            )
            stack.push_async_callback(runtime.models.stop)
            log.info("lifespan.started data_dir=%s", resolved.data_dir.resolve())
            yield {"runtime": runtime}
            log.info("lifespan.stopping")
        log.info("lifespan.stopped")

    return lifespan


class CleanStartupErrors:
    """Report a `FraudAppError` at startup as its one-paragraph message, not a traceback.

    Starlette sends the formatted traceback as the `lifespan.startup.failed` message, which
    uvicorn logs before exiting non-zero; for errors we raise on purpose (an unreachable
    database, say) the message itself is the useful part.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_clean(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                exc = sys.exc_info()[1]
                if isinstance(exc, FraudAppError):
                    message = {**message, "message": f"fraudapp cannot start: {exc.detail}"}
            await send(message)

        await self.app(scope, receive, send_clean)
