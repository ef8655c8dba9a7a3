"""Request dependencies as `Annotated` aliases, so route signatures read like declarations."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import redis.asyncio as aioredis
from fastapi import Depends, Request

from fraudapp.lifespan import Runtime
from fraudapp.settings import Settings


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.state.runtime
    return runtime


def get_pool(request: Request) -> asyncpg.Pool:
    return get_runtime(request).pool


def get_redis(request: Request) -> aioredis.Redis:
    return get_runtime(request).redis


def get_settings(request: Request) -> Settings:
    return get_runtime(request).settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
RedisDep = Annotated[aioredis.Redis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
