"""Alembic environment: the URL comes from fraudapp's settings, embedded server included.

The app passes its URL in `config.attributes["url"]`; from the command line the URL is
FRAUDAPP_DATABASE_URL, or the embedded PostgreSQL under FRAUDAPP_DATA_DIR is started for the
duration of the command.
"""

import asyncio
import logging.config
from contextlib import ExitStack

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from fraudapp.embedded import embedded_postgres
from fraudapp.settings import Settings

config = context.config
if config.config_file_name is not None and not config.attributes.get("url"):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(_sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    with ExitStack() as stack:
        url = config.attributes.get("url")
        if url is None:
            settings = Settings()
            url = settings.database_url or stack.enter_context(embedded_postgres(settings.data_dir))
        asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise SystemExit("fraudapp migrations run online only: drop --sql")
run_migrations_online()
