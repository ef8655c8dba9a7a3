"""`fraudapp bench pipeline`: the streaming pipeline at a fixed offered rate, end to end.

Simulated transactions → bounded queue → features → model → policy → reasons → PostgreSQL
(COPY) + Redis, in this process, exactly as the app runs them. Prints the sustained committed
throughput, enqueue→committed latency percentiles, per-stage times and memory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import tempfile
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from asyncpg import connect as pg_connect

from fraudapp import cache, store
from fraudapp.embedded import embedded_postgres, embedded_redis
from fraudapp.features import FeatureConfig, FeatureState
from fraudapp.generator import SimulationConfig, simulate_history
from fraudapp.metrics import PipelineMetrics
from fraudapp.model import ServingModel, load_champion, train_first_model
from fraudapp.pipeline import Feed, Pipeline
from fraudapp.policy import Policy
from fraudapp.scoring import Scorer
from fraudapp.settings import Settings
from fraudapp.transactions import TransactionBatch

BENCH_DATABASE = "fraudapp_bench"


def add_cli(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "pipeline", help="streaming pipeline throughput and latency at an offered rate"
    )
    parser.add_argument("--rate", type=float, default=25_000, help="offered tx/s (0: flat out)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured duration")
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--terminals", type=int, default=20_000)
    parser.add_argument("--batch-max-size", type=int, default=2048)
    parser.add_argument("--writes-in-flight", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=500, help="transactions per queued chunk")
    parser.add_argument(
        "--history-days",
        type=int,
        default=2,
        help="days of history replayed into the feature state before the stream (as at startup)",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store with a champion (default: train one)"
    )
    parser.set_defaults(handler=lambda args: asyncio.run(run(args)))


async def run(args: argparse.Namespace) -> int:
    settings = Settings()
    async with AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudapp-bench-")))
        admin_url = settings.database_url or stack.enter_context(embedded_postgres(workdir))
        redis_url = settings.redis_url or stack.enter_context(embedded_redis(workdir))
        url = await fresh_database(admin_url)
        await asyncio.to_thread(store.migrate, url)
        pool = await store.create_pool(url, setting="bench", timeout_seconds=10, max_size=8)
        stack.push_async_callback(pool.close)
        redis = await cache.create_redis(redis_url, setting="bench", timeout_seconds=10)
        stack.push_async_callback(redis.aclose)
        await redis.flushdb()

        model = await asyncio.to_thread(_model, args.tracking_uri, workdir)
        # Flat out (--rate 0) needs enough traffic for the fastest configuration measured.
        rate = args.rate if args.rate > 0 else 60_000
        total = int(max(rate, 30_000) * (args.seconds + args.warmup_seconds) * 1.2)
        print(f"generating ~{total:,} transactions for {args.customers:,} customers ...")
        state, batches = await asyncio.to_thread(_traffic, args, total)
        bench_settings = settings.model_copy(
            update={
                "batch_max_size": args.batch_max_size,
                "writes_in_flight": args.writes_in_flight,
                "queue_max_chunks": 256,
            }
        )
        pipeline = Pipeline(
            settings=bench_settings,
            pool=pool,
            redis=redis,
            scorer=Scorer(state, model, Policy(review_score=70, decline_score=90), reasons_top=3),
            metrics=_RecordingMetrics(window_seconds=args.seconds),
            feed=Feed(),
        )
        gc.collect()
        gc.freeze()  # what exists now lives for the whole run; keep the collector off it
        pipeline.start()
        result = await _drive(pipeline, batches, args)
        await pipeline.stop()
        stored = await pool.fetchval("SELECT count(*) FROM decision")
        _report(result, pipeline, state, stored, args)
    return 0


class _RecordingMetrics(PipelineMetrics):
    """The app's metrics plus every batch's commit time and latencies, for the whole run.

    The app keeps only a recent ring of latencies; a benchmark must report the whole window.
    """

    def __init__(self, window_seconds: float) -> None:
        super().__init__(window_seconds=window_seconds)
        self.batches: list[tuple[float, np.ndarray]] = []

    def record_batch(self, *, latencies_s: np.ndarray, committed_at: float, **kwargs: Any) -> None:
        super().record_batch(latencies_s=latencies_s, committed_at=committed_at, **kwargs)
        self.batches.append((committed_at, np.asarray(latencies_s, dtype=np.float32)))


async def fresh_database(admin_url: str, name: str = BENCH_DATABASE) -> str:
    """Drop and create database `name` on the server of `admin_url`; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    conn = await pg_connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def _model(tracking_uri: str | None, workdir: Path) -> ServingModel:
    if tracking_uri:
        model = load_champion(tracking_uri)
        if model is None:
            raise ValueError(f"no champion model in {tracking_uri}")
        return model
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return train_first_model(tracking_uri=uri)


def _traffic(args: argparse.Namespace, total: int) -> tuple[FeatureState, list[TransactionBatch]]:
    """Feature state rebuilt from `--history-days` of simulated history, as the app rebuilds it
    at startup, and the traffic that follows as queued chunks."""
    config = SimulationConfig(seed=5, n_customers=args.customers, n_terminals=args.terminals)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    days = args.history_days + max(1, int(np.ceil(total / (args.customers * 2.0))))
    history = simulate_history(config, start=start, days=days)
    cut = int((history["timestamp"] < start + timedelta(days=args.history_days)).sum())
    state = FeatureState.from_history(history.iloc[:cut], None, config=FeatureConfig())
    if cut:
        print(f"feature state rebuilt from {cut:,} transactions ({args.history_days} days)")
    batch = TransactionBatch.from_frame(history.iloc[cut : cut + total])
    return state, [batch.take(slice(i, i + args.chunk)) for i in range(0, len(batch), args.chunk)]


async def _drive(
    pipeline: Pipeline, batches: list[TransactionBatch], args: argparse.Namespace
) -> dict[str, Any]:
    """Offer chunks at the rate (open loop, waiting only on backpressure) and time commits."""
    loop = asyncio.get_running_loop()
    interval = args.chunk / args.rate if args.rate > 0 else 0.0
    started = loop.time()
    measure_from = started + args.warmup_seconds
    measure_to = measure_from + args.seconds
    window: list[float] = []  # wall-clock bounds of the measured window
    sent = 0
    cpu_start = time.process_time()
    for i, batch in enumerate(batches):
        now = loop.time()
        if not window and now >= measure_from:
            window.append(time.time())
            cpu_start = time.process_time()
        if now >= measure_to:
            break
        due = started + i * interval
        if due > now:
            await asyncio.sleep(due - now)
        await pipeline.submit(batch)
        sent += len(batch)
    else:
        print("warning: the generated traffic ran out before the window ended")
    window.append(time.time())
    return {
        "offered_tps": args.rate,
        "sent": sent,
        "window": tuple(window),
        "cpu_seconds": time.process_time() - cpu_start,
    }


def _report(
    result: dict[str, Any],
    pipeline: Pipeline,
    state: FeatureState,
    stored: int,
    args: argparse.Namespace,
) -> None:
    metrics = pipeline.metrics
    assert isinstance(metrics, _RecordingMetrics)
    start, end = result["window"]
    inside = [(at, lat) for at, lat in metrics.batches if start <= at < end]
    latencies = np.concatenate([lat for _, lat in inside]) if inside else np.zeros(1)
    committed = int(sum(len(lat) for _, lat in inside))
    seconds = end - start
    p50, p95, p99, worst = (*np.percentile(latencies, [50, 95, 99]) * 1e3, latencies.max() * 1e3)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu_per_tx = result["cpu_seconds"] / max(committed, 1) * 1e6
    sizes = [len(lat) for _, lat in inside] or [0]
    print(f"offered rate           {result['offered_tps']:>12,.0f} tx/s")
    print(f"committed (sustained)  {committed / seconds:>12,.0f} tx/s over {seconds:.0f} s")
    print(
        f"latency enqueue→commit p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms  "
        f"max {worst:.1f} ms  ({committed:,} transactions)"
    )
    slice_s = 10.0
    for lo in np.arange(start, end, slice_s):
        part = [lat for at, lat in inside if lo <= at < lo + slice_s]
        if part:
            values = np.concatenate(part)
            print(
                f"  {lo - start:>4.0f}-{min(lo + slice_s, end) - start:<4.0f}s "
                f"{len(values) / min(slice_s, end - lo):>8,.0f} tx/s  "
                f"p99 {np.percentile(values, 99) * 1e3:6.1f} ms"
            )
    print(f"batch size             mean {np.mean(sizes):,.0f}  max {max(sizes):,}")
    print(f"process CPU            {cpu_per_tx:>12.1f} µs/tx")
    print(f"stage means per batch  {metrics.stage_means_ms()} ms")
    print(f"rows stored            {stored:>12,}")
    print(f"feature state          {state.memory_bytes() / 2**20:>12.1f} MiB")
    print(f"process max RSS        {rss_mib:>12.1f} MiB  (pid {os.getpid()})")
