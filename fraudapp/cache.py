"""Redis: the live cache of high-risk customers and the live counters.

An optimisation that fails open: every write catches `RedisError`, logs a warning and returns,
so scoring never stops for Redis; PostgreSQL stays the source of truth. Keys carry a versioned
prefix from settings, and every key written has a TTL.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fraudapp.errors import ServiceUnreachable

log = logging.getLogger(__name__)


async def create_redis(url: str, *, setting: str, timeout_seconds: float) -> aioredis.Redis:
    """Connect and ping, or raise `ServiceUnreachable` naming the setting and the address."""
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=5,
        health_check_interval=30,
        decode_responses=True,
    )
    try:
        await asyncio.wait_for(client.ping(), timeout=timeout_seconds)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise ServiceUnreachable(
            f"Cannot reach Redis at {url} (from {setting}): {exc or type(exc).__name__}."
            f" Check that the server is running and the URL is right, or unset {setting} to use"
            " the embedded Redis."
        ) from exc
    return client


async def ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=2))
    except (RedisError, OSError, TimeoutError):
        return False
