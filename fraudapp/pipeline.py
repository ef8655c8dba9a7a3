"""The streaming pipeline: bounded queue → micro-batched scoring → PostgreSQL + Redis → live feed.

Producers (the simulator, the ingest API) put chunks of transactions on one bounded queue and
wait when it is full. The worker gathers chunks into micro-batches, scores them on a single
scoring thread, and hands them to the writers, which commit each batch with COPY (retrying while
PostgreSQL is away, so the queue fills and producers wait), then update the Redis cache (fail
open, with catch-up) and publish to the live feed. The synchronous decision API shares the
scoring thread and the writers. Every task is supervised; stopping drains the queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import pandas as pd
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fraudapp import cache, store
from fraudapp.errors import NotReady, Saturated
from fraudapp.metrics import PipelineMetrics
from fraudapp.scoring import ScoredBatch, Scorer
from fraudapp.settings import Settings
from fraudapp.transactions import TransactionBatch

log = logging.getLogger(__name__)

# Errors after which a write is retried as it is: the server is away, not the data wrong.
RETRYABLE_WRITE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
)
_RECENT_DECISIONS = 200_000
_MAX_RESTARTS = 5
_INLINE_ROWS = 32  # decision groups up to this size are scored on the event loop when possible
# Synchronous decisions waiting for a writer, in transactions. Responses never wait for a write;
# past this many waiting rows the next group of requests does (backpressure, bounded memory).
_DECISIONS_WAITING_MAX = 8192


@dataclass(slots=True)
class Chunk:
    """What a producer puts on the queue: transactions that arrived together."""

    batch: TransactionBatch
    received_at: float
    check_duplicates: bool = False


_STOP: Any = object()


class Feed:
    """The live feed: each subscriber gets a bounded queue of decision rows, oldest dropped."""

    def __init__(self, *, rows_per_batch: int = 40, subscriber_buffer: int = 500) -> None:
        self.rows_per_batch = rows_per_batch
        self.subscriber_buffer = subscriber_buffer
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.subscriber_buffer)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(queue)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, scored: ScoredBatch) -> None:
        """Every risky decision and a sample of approvals, so a fast stream stays readable."""
        if not self._subscribers:
            return
        risky = scored.risky
        room = max(0, self.rows_per_batch - len(risky))
        approved: np.ndarray | list[int] = []
        if room:
            approved = np.setdiff1d(np.arange(len(scored)), risky)[-room:]
        rows = [scored.row(int(i)) for i in (*approved, *risky[: self.rows_per_batch])]
        for queue in self._subscribers:
            for row in rows:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(row)


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        scorer: Scorer,
        metrics: PipelineMetrics,
        feed: Feed,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.scorer = scorer
        self.metrics = metrics
        self.feed = feed
        self.queue: asyncio.Queue[Chunk] = asyncio.Queue(maxsize=settings.queue_max_chunks)
        self._writes: asyncio.Queue[ScoredBatch] = asyncio.Queue(maxsize=settings.writes_in_flight)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        # Held by whoever touches the feature state: the scoring thread, or the event loop
        # scoring a small group of decisions inline when the thread is idle (no thread hop).
        self._state_lock = threading.Lock()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failures: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self.failed = False
        self.accepting = False
        self.started_at: float | None = None
        self.database_error: str | None = None
        self.cache_error: str | None = None
        self._cache_backlog: dict[str, cache.RiskyCustomer] = {}
        self._cache_counts: dict[str, int] = {}
        self._cache_retry_at = 0.0
        self._cache_backoff = 0.5
        self._cache_lock = asyncio.Lock()
        # Recent decisions by id, as JSON bytes: 200,000 dicts would be ~600,000 objects for the
        # garbage collector to walk on every full collection (70 ms each, measured); bytes are
        # not tracked at all.
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._pending: list[tuple[TransactionBatch, float, asyncio.Future[list[dict[str, Any]]]]]
        self._pending = []
        self._flushing = False
        self._flush_task: asyncio.Task[None] | None = None
        # Decided groups wait here and go to the writers merged: under load a group is a few
        # requests, and a write per group would cost its fixed round trips each time.
        self._decided: list[ScoredBatch] = []
        self._decided_rows = 0
        self._decided_ready = asyncio.Event()
        self._decided_room = asyncio.Event()
        self._decided_room.set()
        self._decisions_closed = False
        metrics.bind_queue(self.queue.qsize)
        metrics.set_model(scorer.model.version)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.time()
        self.accepting = True
        self._spawn("worker", self._work)
        for i in range(self.settings.writes_in_flight):
            self._spawn(f"writer-{i}", self._write)
        self._spawn("cache-janitor", self._expire_cache)
        self._spawn("decision-feeder", self._feed_decisions)

    def _spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self._tasks[name] = asyncio.create_task(self._supervise(name, factory), name=name)

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Restart a crashed task a few times with backoff; then mark the pipeline failed."""
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                count = self.restarts.get(name, 0) + 1
                self.restarts[name] = count
                self.failures[name] = f"{type(exc).__name__}: {exc}"
                log.exception("pipeline.task_crashed task=%s restarts=%d", name, count)
                if count > _MAX_RESTARTS:
                    self.failed = True
                    self.accepting = False
                    log.error("pipeline.failed task=%s gave up after %d restarts", name, count)
                    return
                await asyncio.sleep(min(0.2 * 2**count, 10.0))

    async def stop(self) -> None:
        """Stop accepting, drain the queue and the writers within the deadline, then stop.

        The producers are stopped first by the caller; what they queued is still scored and
        committed.
        """
        self.accepting = False
        deadline = self.settings.shutdown_drain_seconds
        writers = [t for name, t in self._tasks.items() if name.startswith("writer")]
        try:
            await asyncio.wait_for(self.queue.join(), deadline)
            # Decisions being scored now, then their writes, go in before the writers stop.
            if self._flush_task is not None:
                await asyncio.wait_for(asyncio.shield(self._flush_task), deadline)
            self._decisions_closed = True
            self._decided_ready.set()
            feeder = self._tasks["decision-feeder"]
            await asyncio.wait_for(asyncio.shield(feeder), deadline)
            for _ in writers:
                await asyncio.wait_for(self._writes.put(_STOP), deadline)
            await asyncio.wait_for(asyncio.gather(*writers), deadline)
            # What an outage left held, in case Redis is back within the backoff.
            await asyncio.wait_for(self._flush_cache(now=True), deadline)
        except TimeoutError:
            log.error(
                "pipeline.drain_timeout queued_chunks=%d pending_writes=%d",
                self.queue.qsize(),
                self._writes.qsize(),
            )
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._executor.shutdown(wait=True)
        log.info("pipeline.stopped committed=%d", self.metrics.committed_total)

    # --- producers ---------------------------------------------------------------------------
    async def submit(self, batch: TransactionBatch, *, check_duplicates: bool = False) -> None:
        """Put a chunk on the queue, waiting while it is full (backpressure)."""
        if not self.accepting:
            raise NotReady("the pipeline is not accepting transactions")
        await self.queue.put(Chunk(batch, time.time(), check_duplicates))

    def submit_nowait(self, batch: TransactionBatch) -> None:
        """Put a chunk on a queue known to have room (see `queue.full()`)."""
        self.queue.put_nowait(Chunk(batch, time.time()))

    def offer(self, batch: TransactionBatch) -> None:
        """Put a chunk on the queue now or raise `Saturated` (the ingest API's 503)."""
        if not self.accepting:
            raise NotReady("the pipeline is not accepting transactions")
        try:
            self.queue.put_nowait(Chunk(batch, time.time(), check_duplicates=True))
        except asyncio.QueueFull:
            raise Saturated(
                f"the ingest queue is full ({self.queue.maxsize} chunks); retry shortly",
                retry_after_seconds=1,
            ) from None

    # --- worker ------------------------------------------------------------------------------
    async def _next_batch(self) -> list[Chunk]:
        loop = asyncio.get_running_loop()
        first = await self.queue.get()
        chunks = [first]
        size = len(first.batch)
        deadline = loop.time() + self.settings.batch_max_wait_ms / 1000.0
        while size < self.settings.batch_max_size:
            try:
                chunk = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.accepting:
                    break
                try:
                    chunk = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            chunks.append(chunk)
            size += len(chunk.batch)
        return chunks

    async def _work(self) -> None:
        while True:
            chunks = await self._next_batch()
            try:
                await self._score_chunks(chunks)
            finally:
                for _ in range(len(chunks)):
                    self.queue.task_done()

    async def _score_chunks(self, chunks: list[Chunk]) -> None:
        """De-duplicate and score one micro-batch and hand it to the writers.

        A batch that fails here for any reason but PostgreSQL being away (a bug in feature code
        on odd input, say) is kept in the dead-letter folder with the error, and the worker goes
        on with the next one.
        """
        loop = asyncio.get_running_loop()
        try:
            chunks = await self._without_stored(chunks)
            if not sum(len(c.batch) for c in chunks):
                return
            scored = await loop.run_in_executor(self._executor, self._score, chunks)
        except Exception as exc:
            batches = [c.batch for c in chunks if len(c.batch)]
            if not batches:
                log.exception("worker.failed rows=0")
                return
            batch = TransactionBatch.concat(batches)
            path = await asyncio.to_thread(self._dead_letter, batch, exc)
            self.failures["worker"] = f"{type(exc).__name__}: {exc} (kept in {path})"
            log.exception("worker.dead_letter rows=%d path=%s", len(batch), path)
            return
        await self._writes.put(scored)

    def _score(self, chunks: list[Chunk]) -> ScoredBatch:
        with self._state_lock:
            return self._score_locked(chunks)

    def _score_locked(self, chunks: list[Chunk]) -> ScoredBatch:
        chunks = [c for c in chunks if len(c.batch)]
        batch = TransactionBatch.concat([c.batch for c in chunks])
        received = np.concatenate([np.full(len(c.batch), c.received_at) for c in chunks])
        return self.scorer.score(batch, received)

    async def _without_stored(self, chunks: list[Chunk]) -> list[Chunk]:
        """Drop transactions of API chunks whose id is already stored, decided or repeated."""
        checked = [c for c in chunks if c.check_duplicates and len(c.batch)]
        if not checked:
            return chunks
        ids = np.concatenate([c.batch.transaction_id for c in checked]).tolist()
        seen = await self._fetch_stored_ids(ids)
        seen.update(i for i in ids if i in self._recent)
        result = []
        for chunk in chunks:
            if not chunk.check_duplicates:
                result.append(chunk)
                continue
            keep = []
            for i, tx_id in enumerate(chunk.batch.transaction_id):
                if tx_id not in seen:
                    seen.add(tx_id)
                    keep.append(i)
            if len(keep) < len(chunk.batch):
                log.info("pipeline.duplicates_skipped count=%d", len(chunk.batch) - len(keep))
            result.append(Chunk(chunk.batch.take(np.array(keep, dtype=np.intp)), chunk.received_at))
        return result

    async def _fetch_stored_ids(self, ids: list[str]) -> set[str]:
        """The stored ids among `ids`, retrying with backoff while PostgreSQL is away.

        The batch waits here, like a write does: the queue fills and producers wait.
        """
        delay, retried = 0.1, False
        while True:
            try:
                seen = await store.fetch_stored_ids(self.pool, ids=ids)
            except RETRYABLE_WRITE_ERRORS as exc:
                self.database_error = f"{type(exc).__name__}: {exc}"
                log.warning("worker.retry rows=%d in_s=%.1f error=%s", len(ids), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.writer_retry_max_seconds)
                retried = True
                continue
            if retried:
                log.info("worker.database_back")
                self.database_error = None
            return seen

    # --- synchronous decisions ---------------------------------------------------------------
    async def decide(self, batch: TransactionBatch) -> list[dict[str, Any]]:
        """Score now; concurrent calls share one model call. Known ids get their first decision."""
        if not self.accepting:
            raise NotReady("the pipeline is not accepting transactions")
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, time.time(), future))
        if not self._flushing:
            self._flushing = True
            self._flush_task = asyncio.create_task(self._flush_decisions())
        return await future

    async def _flush_decisions(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                try:
                    await self._decide_group(loop, pending)
                except Exception as exc:
                    log.exception("pipeline.decide_failed requests=%d", len(pending))
                    for _, _, future in pending:
                        if not future.done():
                            future.set_exception(exc)
        finally:
            self._flushing = False

    async def _decide_group(
        self,
        loop: asyncio.AbstractEventLoop,
        pending: list[tuple[TransactionBatch, float, asyncio.Future[list[dict[str, Any]]]]],
    ) -> None:
        ids = [tx_id for batch, _, _ in pending for tx_id in batch.transaction_id]
        unknown = [i for i in ids if i not in self._recent]
        if unknown:
            # Usually none is stored: ask for the ids alone, the rows only when some are.
            stored = await store.fetch_decided_ids(self.pool, ids=unknown)
            if stored:
                for row in await store.fetch_decisions(self.pool, ids=sorted(stored)):
                    self._remember(row)
        new_chunks, fresh = [], set()
        for batch, received, _ in pending:
            keep = []
            for i, tx_id in enumerate(batch.transaction_id):
                if tx_id not in self._recent and tx_id not in fresh:
                    fresh.add(tx_id)
                    keep.append(i)
            if keep:
                new_chunks.append(Chunk(batch.take(np.array(keep, dtype=np.intp)), received))
        scored = None
        answers: dict[str, dict[str, Any]] = {}
        if new_chunks:
            rows = sum(len(c.batch) for c in new_chunks)
            if rows <= _INLINE_ROWS and self._state_lock.acquire(blocking=False):
                try:  # a fraction of a millisecond: cheaper than the hop to the thread
                    scored = self._score_locked(new_chunks)
                finally:
                    self._state_lock.release()
            else:
                scored = await loop.run_in_executor(self._executor, self._score, new_chunks)
            for i in range(len(scored)):
                row = scored.row(i)
                answers[str(row["transaction_id"])] = row
                self._remember(row)
        # Answer first: the decision is made and remembered (a repeat gets the same answer);
        # committing it may wait for a writer, and the next group waits here with it.
        for batch, _, future in pending:
            if not future.done():
                future.set_result([answers.get(t) or self._recall(t) for t in batch.transaction_id])
        if scored is not None:
            while self._decided_rows >= _DECISIONS_WAITING_MAX:
                self._decided_room.clear()
                await self._decided_room.wait()
            self._decided.append(scored)
            self._decided_rows += len(scored)
            self._decided_ready.set()

    async def _feed_decisions(self) -> None:
        """Hand the decided groups to the writers, merged by model version, as they free up."""
        wait_seconds = self.settings.batch_max_wait_ms / 1000.0
        while True:
            await self._decided_ready.wait()
            self._decided_ready.clear()
            # Like the stream's micro-batches: gather for up to the batch wait, so one write
            # carries many decisions (each write costs two COPYs and a commit whatever its size).
            if not self._decisions_closed and self._decided_rows < self.settings.batch_max_size:
                await asyncio.sleep(wait_seconds)
            while self._decided:
                waiting, self._decided, self._decided_rows = self._decided, [], 0
                self._decided_room.set()
                start = 0
                for end in range(1, len(waiting) + 1):
                    if end == len(waiting) or (
                        waiting[end].model_version != waiting[start].model_version
                    ):
                        await self._writes.put(ScoredBatch.concat(waiting[start:end]))
                        start = end
            if self._decisions_closed:
                return

    def _remember(self, row: dict[str, Any]) -> None:
        self._recent[row["transaction_id"]] = orjson.dumps(row, default=_plain)
        if len(self._recent) > _RECENT_DECISIONS:
            self._recent.popitem(last=False)

    def _recall(self, transaction_id: str) -> dict[str, Any]:
        row: dict[str, Any] = orjson.loads(self._recent[transaction_id])
        return row

    # --- writers -----------------------------------------------------------------------------
    async def _write(self) -> None:
        while True:
            scored = await self._writes.get()
            if scored is _STOP:
                return
            started = time.perf_counter()
            await self._store(scored)
            stored = time.perf_counter()
            committed_at = time.time()
            await self._cache(scored)
            cached = time.perf_counter()
            self.feed.publish(scored)
            timings = dict(scored.timings_ms)
            timings["store"] = (stored - started) * 1e3
            timings["cache"] = (cached - stored) * 1e3
            self.metrics.record_batch(
                timings_ms=timings,
                decisions=scored.decision,
                latencies_s=committed_at - scored.received_at,
                committed_at=committed_at,
            )

    async def _store(self, scored: ScoredBatch) -> None:
        """Commit the batch, holding it and retrying with backoff while PostgreSQL is away.

        A batch the database refuses for its content (a bug, never a transient fault) is kept
        in the dead-letter folder with the error instead of being dropped.
        """
        delay = 0.1
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await store.insert_scored(conn, scored=scored)
                if self.database_error:
                    log.info("writer.database_back")
                self.database_error = None
                return
            except Exception as exc:
                if not isinstance(exc, RETRYABLE_WRITE_ERRORS):
                    path = await asyncio.to_thread(self._dead_letter, scored, exc)
                    self.failures["writer"] = f"{type(exc).__name__}: {exc} (kept in {path})"
                    log.exception("writer.dead_letter rows=%d path=%s", len(scored), path)
                    return
                self.database_error = f"{type(exc).__name__}: {exc}"
                self.metrics.write_retries.inc()
                log.warning("writer.retry rows=%d in_s=%.1f error=%s", len(scored), delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.writer_retry_max_seconds)

    def _dead_letter(self, batch: ScoredBatch | TransactionBatch, error: BaseException) -> Path:
        """Keep a batch that cannot go on as Parquet with its error; unscored, it has no score."""
        folder = self.settings.data_dir / "dead_letter"
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(batch, ScoredBatch):
            frame = batch.transactions.to_frame()
            frame["score"] = batch.score
            frame["decision"] = batch.decision
            frame["model_version"] = batch.model_version
        else:
            frame = batch.to_frame()
        frame["error"] = f"{type(error).__name__}: {error}"
        path = folder / f"batch-{time.time_ns()}.parquet"
        frame.to_parquet(path)
        self.metrics.dead_letters.inc(len(frame))
        return path

    async def _cache(self, scored: ScoredBatch) -> None:
        """Write risky customers and counters; while Redis is away keep them and try later."""
        values, counts = np.unique(scored.decision, return_counts=True)
        self._hold_for_cache(
            cache.risky_customers(scored),
            {str(v): int(c) for v, c in zip(values, counts, strict=True)},
        )
        await self._flush_cache()

    def _hold_for_cache(
        self, risky: dict[str, cache.RiskyCustomer], counts: dict[str, int]
    ) -> None:
        for customer, summary in risky.items():
            held = self._cache_backlog.get(customer)
            if held is None or held.score <= summary.score:
                self._cache_backlog[customer] = summary
        for value, count in counts.items():
            self._cache_counts[value] = self._cache_counts.get(value, 0) + count

    async def _flush_cache(self, *, now: bool = False) -> None:
        """Write what is held in one round trip, unless an outage's backoff still runs (`now`
        skips it). One flush at a time: the writers' and the janitor's."""
        async with self._cache_lock:
            if not now and time.monotonic() < self._cache_retry_at:
                self._trim_backlog()
                return
            if not self._cache_backlog and not self._cache_counts:
                return
            # Taken out for the round trip: what a writer holds meanwhile waits for the next.
            risky, counts = self._cache_backlog, self._cache_counts
            self._cache_backlog, self._cache_counts = {}, {}
            try:
                await cache.record_batch(
                    self.redis,
                    prefix=self.settings.cache_key_prefix,
                    ttl_seconds=self.settings.cache_ttl_seconds,
                    risky=risky,
                    decision_counts=counts,
                )
            except (RedisError, OSError) as exc:
                self._hold_for_cache(risky, counts)
                self.metrics.cache_errors.inc()
                if self.cache_error is None:
                    log.warning("cache.unavailable error=%s (scoring goes on)", exc)
                self.cache_error = f"{type(exc).__name__}: {exc}"
                self._cache_retry_at = time.monotonic() + self._cache_backoff
                self._cache_backoff = min(self._cache_backoff * 2, 30.0)
                self._trim_backlog()
                return
            if self.cache_error:
                log.info("cache.back caught_up_customers=%d", len(risky))
            self.cache_error = None
            self._cache_backoff = 0.5

    def _trim_backlog(self, limit: int = 100_000) -> None:
        if len(self._cache_backlog) > limit:
            keep = sorted(self._cache_backlog.values(), key=lambda s: s.score)[-limit:]
            self._cache_backlog = {s.customer_id: s for s in keep}

    async def _expire_cache(self) -> None:
        """Every 30 s drop customers older than the TTL. Every second, write what an outage
        left held once its backoff is over: with no batch coming after Redis is back (a
        paused or finished stream), nothing else would."""
        next_expiry = time.monotonic() + 30
        while True:
            await asyncio.sleep(1)
            if self._cache_backlog or self._cache_counts:
                await self._flush_cache()
            if time.monotonic() < next_expiry:
                continue
            next_expiry = time.monotonic() + 30
            try:
                await cache.expire_high_risk(
                    self.redis,
                    prefix=self.settings.cache_key_prefix,
                    ttl_seconds=self.settings.cache_ttl_seconds,
                )
            except (RedisError, OSError) as exc:
                log.warning("cache.expire_failed error=%s", exc)

    # --- labels ------------------------------------------------------------------------------
    async def submit_labels(self, labels: pd.DataFrame) -> pd.DataFrame:
        """Store label events, then let them update the feature state (terminal risk)."""
        if labels.empty:
            return labels
        delay = 0.1
        while True:
            try:
                stored = await store.insert_labels(self.pool, labels=labels)
                break
            except RETRYABLE_WRITE_ERRORS as exc:
                log.warning("labels.retry rows=%d error=%s", len(labels), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.writer_retry_max_seconds)
        if len(stored) < len(labels):
            log.info("labels.unmatched count=%d", len(labels) - len(stored))
        if not stored.empty:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._locked, self.scorer.add_labels, stored)
            for source, count in stored["source"].value_counts().items():
                self.metrics.labels.labels(source=str(source)).inc(int(count))
        return stored

    async def run_on_scoring_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` where the feature state lives (reads of the state must not race updates)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._locked, fn, *args
        )

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._state_lock:
            return fn(*args)

    def swap_model(self, model: Any) -> None:
        self.scorer.swap_model(model)
        self.metrics.set_model(model.version)

    # --- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        dead = sorted(name for name, task in self._tasks.items() if task.done())
        ready = self.accepting and not self.failed and not dead
        return {
            "ready": ready,
            "state": "failed" if self.failed else ("running" if self.accepting else "stopped"),
            "queue_depth": self.queue.qsize(),
            "queue_max": self.queue.maxsize,
            "writes_pending": self._writes.qsize(),
            "committed": self.metrics.committed_total,
            "throughput_tps": round(self.metrics.throughput_tps(), 1),
            "latency_ms": self.metrics.latency_ms(),
            "stage_ms": self.metrics.stage_means_ms(),
            "model_version": self.scorer.model.version,
            "database_error": self.database_error,
            "cache_error": self.cache_error,
            "dead_tasks": dead,
            "crashes": dict(self.restarts),
            "last_errors": dict(self.failures),
        }


def _plain(value: Any) -> Any:
    """orjson's fallback for a stored decision's values (NUMERIC amounts)."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
