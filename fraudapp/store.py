"""PostgreSQL, the source of truth: connection pool, migrations and every query.

One typed async function per query, SQL inline with `$n` parameters, the connection or pool first.
Scored micro-batches arrive from the writer and go in with `COPY`, one commit per batch; reads for
the API and the dashboard aggregate in SQL.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg

from fraudapp.errors import ServiceUnreachable

log = logging.getLogger(__name__)

Executor = asyncpg.Pool | asyncpg.Connection
ALEMBIC_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def migrate(url: str, *, revision: str = "head") -> None:
    """Run `alembic upgrade` to `revision` (blocking: call it from a thread)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    command.upgrade(config, revision)


def downgrade(url: str, *, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    command.downgrade(config, revision)


async def _init_connection(conn: asyncpg.Connection) -> None:
    import json

    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )


async def create_pool(
    url: str, *, setting: str, timeout_seconds: float, max_size: int = 8
) -> asyncpg.Pool:
    """Open the pool, or raise `ServiceUnreachable` naming the setting and the address."""
    try:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                url,
                min_size=2,
                max_size=max_size,
                init=_init_connection,
                command_timeout=60,
                server_settings={"application_name": "fraudapp"},
            ),
            timeout=timeout_seconds,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        raise ServiceUnreachable(
            f"Cannot reach PostgreSQL at {redact(url)} (from {setting}): {exc or type(exc).__name__}."
            f" Check that the server is running and the URL is right, or unset {setting} to use"
            " the embedded PostgreSQL."
        ) from exc
    assert pool is not None
    return pool


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def ping(db: Executor) -> bool:
    return bool(await db.fetchval("SELECT 1"))


async def schema_revision(db: Executor) -> str | None:
    try:
        return await db.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return None


def record_dict(record: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(record) if record is not None else None
