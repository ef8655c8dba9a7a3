"""Request dependencies as `Annotated` aliases, so route signatures read like declarations."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, Request

from fraudapp.lifespan import Runtime
from fraudapp.settings import Settings


# Async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per
# request for what is an attribute lookup.
async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


async def get_pool(request: Request) -> asyncpg.Pool:
    return request.state.runtime.pool


async def get_redis(request: Request) -> aioredis.Redis:
    return request.state.runtime.redis


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.runtime.settings
    return settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
