"""Startup and shutdown as a user sees them: embedded servers, persistence, clean errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fraudapp.main import create_app
from fraudapp.settings import Settings

from .conftest import wait_until


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


async def test_embedded_servers_keep_data_across_restarts_and_stop_with_the_app(
    tmp_path: Path, tracking_uri: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        mlflow_tracking_uri=tracking_uri,
        simulator_enabled=False,
        log_level="WARNING",
    )
    before = _descendants()
    for attempt in range(2):
        app = create_app(settings)
        async with app.router.lifespan_context(app) as state:
            runtime = state["runtime"]
            assert runtime.database_embedded and runtime.redis_embedded
            engine = runtime.engine
            await wait_until(lambda e=engine: e.pipeline_report()["ready"], within=120)
            if attempt == 0:
                await runtime.pool.execute(
                    "INSERT INTO list_entry (list, entity_type, entity_id, reason, created_by)"
                    " VALUES ('block', 'customer', 'C-persist', 'test', 'test')"
                )
                await runtime.redis.set("fraudapp:test:persist", "yes")
            else:
                reason = await runtime.pool.fetchval(
                    "SELECT reason FROM list_entry WHERE entity_id = 'C-persist'"
                )
                assert reason == "test"
                assert await runtime.redis.get("fraudapp:test:persist") == "yes"
        leftover = {pid for pid in _descendants() - before if _alive(pid)}
        assert leftover == set(), "the embedded servers must stop with the app"
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(
    ("variable", "value", "address"),
    [
        ("FRAUDAPP_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none", "127.0.0.1:1"),
        ("FRAUDAPP_REDIS_URL", "redis://127.0.0.1:1/0", "127.0.0.1:1"),
    ],
)
def test_an_unreachable_server_is_one_clear_paragraph_and_a_non_zero_exit(
    tmp_path: Path, database_url: str, variable: str, value: str, address: str
) -> None:
    env = {
        **os.environ,
        "FRAUDAPP_DATA_DIR": str(tmp_path),
        "FRAUDAPP_DATABASE_URL": database_url,
        "FRAUDAPP_CONNECT_TIMEOUT_SECONDS": "3",
        "FRAUDAPP_SIMULATOR_ENABLED": "false",
        variable: value,
    }
    if variable == "FRAUDAPP_REDIS_URL":
        env["FRAUDAPP_DATABASE_URL"] = database_url
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "fraudapp.main:app", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert variable in result.stderr and address in result.stderr
    assert "Traceback" not in result.stderr
