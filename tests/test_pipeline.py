"""The streaming pipeline against real PostgreSQL and Redis: lossless, idempotent, fail-open."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pandas as pd
import pytest
import redis.asyncio as aioredis

from fraudapp import cache, store
from fraudapp.engine import Engine
from fraudapp.features import FeatureConfig, FeatureState
from fraudapp.generator import SimulationConfig, label_events, simulate_history
from fraudapp.metrics import PipelineMetrics
from fraudapp.model import ServingModel, load_champion
from fraudapp.pipeline import Feed, Pipeline
from fraudapp.policy import ListEntry, Policy
from fraudapp.scoring import ScoredBatch, Scorer
from fraudapp.settings import Settings
from fraudapp.transactions import TransactionBatch

from .conftest import make_settings, wait_until

START = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    config = SimulationConfig(seed=21, n_customers=400, n_terminals=300, fraud_rate=0.03)
    return simulate_history(config, start=START, days=4)


@pytest.fixture(scope="module")
def serving_model(tracking_uri: str) -> ServingModel:
    model = load_champion(tracking_uri)
    assert model is not None
    return model


def batches(history: pd.DataFrame, size: int) -> list[TransactionBatch]:
    batch = TransactionBatch.from_frame(history)
    return [batch.take(slice(i, i + size)) for i in range(0, len(batch), size)]


class PipelineFactory:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, model: ServingModel) -> None:
        self.settings, self.pool, self.model = settings, pool, model
        self.started: list[Pipeline] = []

    def __call__(self, redis: aioredis.Redis, **overrides: Any) -> Pipeline:
        settings = self.settings.model_copy(update=overrides)
        policy = Policy(review_score=settings.review_score, decline_score=settings.decline_score)
        scorer = Scorer(FeatureState(FeatureConfig()), self.model, policy, reasons_top=3)
        pipeline = Pipeline(
            settings=settings,
            pool=self.pool,
            redis=redis,
            scorer=scorer,
            metrics=PipelineMetrics(),
            feed=Feed(),
        )
        pipeline.start()
        self.started.append(pipeline)
        return pipeline


@pytest.fixture
async def make_pipeline(
    settings: Settings,
    pool: asyncpg.Pool,
    serving_model: ServingModel,
    redis_client: aioredis.Redis,
) -> AsyncIterator[PipelineFactory]:
    # Depending on redis_client makes it close after the pipelines stop: a writer still
    # running would reconnect the closed client and leak the connection into a later test.
    del redis_client
    factory = PipelineFactory(settings, pool, serving_model)
    yield factory
    for pipeline in factory.started:
        if pipeline.accepting:
            await pipeline.stop()


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def test_every_transaction_is_scored_stored_and_explained(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    pipeline = make_pipeline(redis_client, review_score=30, decline_score=80)
    feed = pipeline.feed.subscribe()
    for batch in batches(history, 700):
        await pipeline.submit(batch)
    await wait_until(lambda: pipeline.metrics.committed_total == len(history))

    assert await count(pool, "transaction") == len(history)
    assert await count(pool, "decision") == len(history)
    risky = await pool.fetch(
        "SELECT reasons, score, decision FROM decision WHERE decision <> 'approve'"
    )
    assert risky, "a 3 % fraud history at a low review score must flag something"
    for row in risky:
        assert row["score"] >= 30
        reasons = json.loads(row["reasons"])
        assert 1 <= len(reasons) <= 3
        assert all(r["text"] and r["contribution"] > 0 for r in reasons)
    # features are stored with every decision, in the model's order
    blob = await pool.fetchval("SELECT features FROM decision LIMIT 1")
    assert len(blob) == 4 * len(pipeline.scorer.model.feature_names)
    # risky customers reached the Redis sorted set, approvals did not
    cached = await cache.fetch_high_risk(
        redis_client, prefix=pipeline.settings.cache_key_prefix, limit=1000
    )
    flagged = {
        r["customer_id"]
        for r in await pool.fetch(
            "SELECT DISTINCT t.customer_id FROM decision d JOIN transaction t USING "
            "(transaction_id) WHERE d.decision <> 'approve'"
        )
    }
    assert {c["customer_id"] for c in cached} == flagged
    counters = await cache.fetch_counters(redis_client, prefix=pipeline.settings.cache_key_prefix)
    assert sum(counters.values()) == len(history)
    assert not feed.empty()
    status = pipeline.status()
    assert status["ready"] and status["committed"] == len(history)
    assert set(status["stage_ms"]) >= {"features", "predict", "reasons", "store", "cache"}


async def test_a_transaction_id_is_stored_once(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    pipeline = make_pipeline(redis_client)
    first = TransactionBatch.from_frame(history.iloc[:300])
    await pipeline.submit(first)
    await wait_until(lambda: pipeline.metrics.committed_total == 300)
    # the same ids again, through the API path and through the trusted path
    pipeline.offer(first.take(slice(0, 200)))
    await pipeline.submit(TransactionBatch.from_frame(history.iloc[250:400]))
    await wait_until(lambda: pipeline.queue.qsize() == 0 and pipeline._writes.qsize() == 0)
    await wait_until(lambda: count(pool, "decision"), within=10)
    await pipeline.stop()
    assert await count(pool, "transaction") == 400
    assert await count(pool, "decision") == 400


async def test_a_full_queue_makes_producers_wait(
    make_pipeline: PipelineFactory, redis_client: aioredis.Redis, history: pd.DataFrame
) -> None:
    pipeline = make_pipeline(redis_client, queue_max_chunks=2, batch_max_size=50)
    release = threading.Event()
    original = pipeline._score

    def held(chunks: Any) -> Any:  # the scoring thread is busy until released
        release.wait(30)
        return original(chunks)

    pipeline._score = held  # type: ignore[method-assign]
    producer = asyncio.create_task(_submit_all(pipeline, batches(history.iloc[:500], 50)))
    await wait_until(pipeline.queue.full)
    assert not producer.done(), "the producer must wait while the queue is full"
    release.set()
    await asyncio.wait_for(producer, 30)
    await wait_until(lambda: pipeline.metrics.committed_total == 500)


async def _submit_all(pipeline: Pipeline, chunks: list[TransactionBatch]) -> None:
    for chunk in chunks:
        await pipeline.submit(chunk)


async def test_shutdown_drains_the_queue(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    pipeline = make_pipeline(redis_client)
    for batch in batches(history, 100):
        await pipeline.submit(batch)
    await pipeline.stop()  # at once: everything queued must still be committed
    assert await count(pool, "decision") == len(history)


class TcpProxy:
    """A loopback TCP proxy to PostgreSQL that a test can cut and restore."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self, port: int = 0) -> int:
        """Listen on `port` (0: any free one, then kept in `self.port`)."""
        self.server = await asyncio.start_server(self._link, "127.0.0.1", port)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self.port

    async def _open_target(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.target)
        if parts.hostname:
            return await asyncio.open_connection(parts.hostname, parts.port or 5432)
        socket_dir = dict(p.split("=", 1) for p in parts.query.split("&"))["host"]
        from urllib.parse import unquote

        return await asyncio.open_unix_connection(f"{unquote(socket_dir)}/.s.PGSQL.5432")

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target_reader, target_writer = await self._open_target()
        self.links.update({writer, target_writer})

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, target_writer), pump(target_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for link in self.links:
            link.close()
        self.links.clear()
        await self.server.wait_closed()


def proxied(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    database = parts.path
    return urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", database, "", ""))


@contextlib.asynccontextmanager
async def behind_a_proxy(
    make_pipeline: PipelineFactory, redis: aioredis.Redis, database_url: str
) -> AsyncIterator[tuple[Pipeline, TcpProxy]]:
    """A pipeline whose PostgreSQL connections go through a proxy the test can cut."""
    proxy = TcpProxy(database_url)
    port = await proxy.start()
    proxied_pool = await store.create_pool(
        proxied(database_url, port), setting="test", timeout_seconds=5
    )
    pipeline = make_pipeline(redis, writer_retry_max_seconds=0.5)
    pipeline.pool = proxied_pool
    try:
        yield pipeline, proxy
    finally:
        await pipeline.stop()
        await proxied_pool.close()
        await proxy.cut()


async def test_postgres_outage_holds_the_batch_and_loses_nothing(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    database_url: str,
    history: pd.DataFrame,
) -> None:
    async with behind_a_proxy(make_pipeline, redis_client, database_url) as (pipeline, proxy):
        first, second = batches(history.iloc[:600], 300)
        await pipeline.submit(first)
        await wait_until(lambda: pipeline.metrics.committed_total == 300)

        await proxy.cut()
        await pipeline.submit(second)
        await wait_until(lambda: pipeline.database_error is not None)
        assert pipeline.metrics.committed_total == 300

        await proxy.start(proxy.port)  # the server is back on the same address
        await wait_until(lambda: pipeline.metrics.committed_total == 600, within=30)
        assert pipeline.database_error is None
        assert await count(pool, "decision") == 600


async def test_redis_outage_fails_open_and_the_cache_catches_up(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    pipeline = make_pipeline(dead, review_score=30, decline_score=80)
    for batch in batches(history, 500):
        await pipeline.submit(batch)
    await wait_until(lambda: pipeline.metrics.committed_total == len(history))
    assert pipeline.cache_error is not None, "the outage is reported"
    assert await count(pool, "decision") == len(history), "scoring and storing went on"

    pipeline.redis = redis_client  # Redis is back
    pipeline._cache_retry_at = 0.0
    extra = simulate_history(
        SimulationConfig(seed=99, n_customers=50, n_terminals=20), start=START, days=1
    )
    extra["transaction_id"] = "x-" + extra["transaction_id"]
    await pipeline.submit(TransactionBatch.from_frame(extra))
    await wait_until(lambda: pipeline.cache_error is None)
    flagged = await pool.fetchval(
        "SELECT count(DISTINCT t.customer_id) FROM decision d JOIN transaction t "
        "USING (transaction_id) WHERE d.decision <> 'approve'"
    )
    cached = await redis_client.zcard(cache.high_risk_key(pipeline.settings.cache_key_prefix))
    assert cached == flagged, "customers flagged during the outage reached the cache after it"
    await dead.aclose()


async def test_block_and_allow_lists_override_the_model(
    make_pipeline: PipelineFactory, redis_client: aioredis.Redis, history: pd.DataFrame
) -> None:
    pipeline = make_pipeline(redis_client)
    customer = history["customer_id"].iloc[0]
    terminal = history["terminal_id"].iloc[1]
    now = datetime.now(UTC)
    pipeline.scorer.policy.put(
        ListEntry(1, "block", "customer", customer, "stolen card", "test", now, None)
    )
    pipeline.scorer.policy.put(
        ListEntry(2, "allow", "terminal", terminal, "own shop", "test", now, None)
    )
    pipeline.scorer.policy.put(
        ListEntry(3, "block", "terminal", "T-expired", "old", "test", now, now - timedelta(1))
    )
    rows = await pipeline.decide(TransactionBatch.from_frame(history.iloc[:2]))
    assert rows[0]["decision"] == "decline" and rows[0]["rule"] == "block_list"
    if history["customer_id"].iloc[1] != customer:
        assert rows[1]["decision"] == "approve" and rows[1]["rule"] == "allow_list"


async def test_sync_decisions_are_idempotent_and_share_a_model_call(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    pipeline = make_pipeline(redis_client)
    singles = batches(history.iloc[:40], 1)
    calls = 0
    original = pipeline.scorer.model.predict

    def counting(features: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return original(features)

    object.__setattr__(pipeline.scorer.model, "predict", counting)
    try:
        first = await asyncio.gather(*(pipeline.decide(b) for b in singles))
        assert calls < len(singles), "concurrent decisions share model calls"
        again = await pipeline.decide(singles[3])
    finally:
        object.__delattr__(pipeline.scorer.model, "predict")
    assert again == first[3]
    await wait_until(lambda: pipeline.metrics.committed_total == 40)
    assert await count(pool, "decision") == 40


async def test_decisions_answered_before_their_write_are_merged_and_kept_at_shutdown(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
) -> None:
    pipeline = make_pipeline(redis_client, batch_max_wait_ms=50)
    answers = [await pipeline.decide(b) for b in batches(history.iloc[:30], 1)]
    assert [a[0]["transaction_id"] for a in answers] == list(history["transaction_id"][:30])
    await pipeline.stop()  # at once: the answered decisions still commit
    assert await count(pool, "decision") == 30
    writes = pipeline.metrics.registry.get_sample_value("fraudapp_batch_size_count")
    assert writes is not None and writes < 30, "one request a write: the groups were not merged"
    stored = await pool.fetch("SELECT transaction_id, score FROM decision")
    assert {r["transaction_id"]: r["score"] for r in stored} == {
        a[0]["transaction_id"]: a[0]["score"] for a in answers
    }


def test_scored_batches_merge_only_within_one_model_version(
    serving_model: ServingModel, history: pd.DataFrame
) -> None:
    policy = Policy(review_score=50, decline_score=90)
    scorer = Scorer(FeatureState(FeatureConfig()), serving_model, policy, reasons_top=3)
    parts = [scorer.score(b, received_at=np.full(len(b), 1.0)) for b in batches(history[:25], 10)]
    merged = ScoredBatch.concat(parts)
    assert len(merged) == 25
    assert [merged.row(i) for i in range(25)] == [p.row(i) for p in parts for i in range(len(p))]
    other = dataclasses.replace(parts[1], model_version="other")
    with pytest.raises(ValueError, match="different model versions"):
        ScoredBatch.concat([parts[0], other])


async def test_a_crashing_task_is_restarted_and_reported(
    make_pipeline: PipelineFactory, redis_client: aioredis.Redis, history: pd.DataFrame
) -> None:
    pipeline = make_pipeline(redis_client)
    original = pipeline._next_batch
    crashes = 0

    async def flaky() -> Any:  # the worker is already waiting in the original for its first batch
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("worker bug")
        return await original()

    pipeline._next_batch = flaky  # type: ignore[method-assign]
    await pipeline.submit(TransactionBatch.from_frame(history.iloc[:10]))
    await wait_until(lambda: pipeline.restarts.get("worker") == 1)
    status = pipeline.status()
    assert status["crashes"] == {"worker": 1}
    assert "worker bug" in status["last_errors"]["worker"]
    await pipeline.submit(TransactionBatch.from_frame(history.iloc[10:20]))
    await wait_until(lambda: pipeline.metrics.committed_total == 20)


async def test_a_batch_that_fails_to_score_is_kept_as_a_dead_letter_and_the_worker_goes_on(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline = make_pipeline(redis_client, batch_max_size=100)  # one chunk, one micro-batch
    first, bad, third = batches(history.iloc[:300], 100)
    bad_ids = set(bad.transaction_id)
    original = pipeline.scorer.score

    def score(batch: TransactionBatch, received_at: np.ndarray) -> ScoredBatch:
        if bad_ids & set(batch.transaction_id):
            raise ValueError("feature bug on odd input")
        return original(batch, received_at)

    pipeline.scorer.score = score  # type: ignore[method-assign]
    for batch in (first, bad, third):
        await pipeline.submit(batch)
    await wait_until(lambda: pipeline.metrics.committed_total == 200)

    (path,) = (pipeline.settings.data_dir / "dead_letter").glob("*.parquet")
    kept = pd.read_parquet(path)
    assert sorted(kept["transaction_id"]) == sorted(bad_ids)
    assert set(kept["error"]) == {"ValueError: feature bug on odd input"}
    assert "score" not in kept.columns, "it was never scored"
    dead = pipeline.metrics.registry.get_sample_value("fraudapp_dead_letter_transactions_total")
    assert dead == 100
    stored = {r["transaction_id"] for r in await pool.fetch("SELECT transaction_id FROM decision")}
    assert stored == set(first.transaction_id) | set(third.transaction_id)
    assert any(r.message.startswith("worker.dead_letter rows=100") for r in caplog.records)
    status = pipeline.status()
    assert status["ready"] and status["crashes"] == {}
    assert str(path) in status["last_errors"]["worker"]


async def test_a_database_outage_during_deduplication_is_retried_not_dead_lettered(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    database_url: str,
    history: pd.DataFrame,
) -> None:
    async with behind_a_proxy(make_pipeline, redis_client, database_url) as (pipeline, proxy):
        await proxy.cut()
        pipeline.offer(TransactionBatch.from_frame(history.iloc[:300]))  # API chunks are checked
        await wait_until(lambda: pipeline.database_error is not None)
        assert pipeline._writes.qsize() == 0 and pipeline.metrics.committed_total == 0

        await proxy.start(proxy.port)
        await wait_until(lambda: pipeline.metrics.committed_total == 300, within=30)
        assert pipeline.database_error is None
        assert await count(pool, "decision") == 300
        assert not (pipeline.settings.data_dir / "dead_letter").exists()
        assert pipeline.status()["crashes"] == {}


async def test_feature_state_rebuilt_from_postgres_matches_the_live_state(
    make_pipeline: PipelineFactory,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    history: pd.DataFrame,
    database_url: str,
    redis_url: str,
    tmp_path: Path,
    tracking_uri: str,
) -> None:
    pipeline = make_pipeline(redis_client)
    labels = label_events(history)
    cut = history["timestamp"].iloc[len(history) * 3 // 4]
    for batch in batches(history[history["timestamp"] < cut], 400):
        await pipeline.submit(batch)
    await wait_until(lambda: pipeline.metrics.committed_total == (history["timestamp"] < cut).sum())
    known = labels[labels["known_at"] < cut]
    await pipeline.submit_labels(known)
    live_state = pipeline.scorer.state
    await pipeline.stop()

    settings = make_settings(database_url, redis_url, tmp_path, mlflow_tracking_uri=tracking_uri)
    engine = Engine(settings, pool, redis_client)
    rebuilt = await engine._rebuild_state()
    assert engine.rebuilt_transactions == (history["timestamp"] < cut).sum()
    probe = TransactionBatch.from_frame(history[history["timestamp"] >= cut].iloc[:300])
    expected = live_state.transform(probe)
    np.testing.assert_allclose(rebuilt.transform(probe), expected, rtol=0, atol=1e-9)
