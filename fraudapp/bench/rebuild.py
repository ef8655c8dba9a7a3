"""`fraudapp bench rebuild`: the startup rebuild of the feature state from PostgreSQL.

Stores simulated history through the writer's COPY path, then times `engine.rebuild_state`, the
code the engine runs at startup. History is simulated and stored in a child process, so that the
max RSS printed is the rebuild's own (with the interpreter and its imports), not the populate's.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fraudapp import store
from fraudapp.bench.pipeline import fresh_database
from fraudapp.embedded import embedded_postgres
from fraudapp.engine import rebuild_state
from fraudapp.features import FeatureConfig
from fraudapp.generator import SimulationConfig, label_events, simulate_history
from fraudapp.policy import APPROVE
from fraudapp.scoring import ScoredBatch
from fraudapp.settings import Settings
from fraudapp.transactions import TransactionBatch

BENCH_DATABASE = "fraudapp_bench_rebuild"
WRITE_ROWS = 50_000  # transactions per COPY while populating


def add_cli(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "rebuild", help="startup rebuild of the feature state from the stored transactions"
    )
    parser.add_argument(
        "--transactions",
        type=int,
        default=1_000_000,
        help="transactions stored: the last ones of just enough simulated days",
    )
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--terminals", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=2, help="rebuilds timed, one after another")
    parser.set_defaults(handler=lambda args: asyncio.run(run(args)))


async def run(args: argparse.Namespace) -> int:
    settings = Settings()
    async with AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fraudapp-bench-")))
        admin_url = settings.database_url or stack.enter_context(embedded_postgres(workdir))
        url = await fresh_database(admin_url, BENCH_DATABASE)
        await asyncio.to_thread(store.migrate, url)

        print(
            f"storing {args.transactions:,} simulated transactions of {args.customers:,} "
            f"customers and {args.terminals:,} terminals ..."
        )
        loop = asyncio.get_running_loop()
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as child:
            populated = await loop.run_in_executor(
                child, _populate, url, args.customers, args.terminals, args.transactions
            )
        _report_populate(populated)

        pool = await store.create_pool(url, setting="bench", timeout_seconds=10, max_size=2)
        stack.push_async_callback(pool.close)
        stored = await pool.fetchval("SELECT count(*) FROM transaction")
        labels = await pool.fetchval("SELECT count(*) FROM label")
        print(f"stored                 {stored:>12,} transactions, {labels:,} labels")

        config = FeatureConfig(label_delay_days=settings.label_delay_days)
        for repeat in range(1, args.repeats + 1):
            gc.collect()
            cpu = time.process_time()
            state, replayed, seconds = await rebuild_state(pool, config=config)
            cpu = time.process_time() - cpu
            print(
                f"rebuild {repeat}              {seconds:>12.2f} s  "
                f"{replayed / max(seconds, 1e-9):,.0f} tx/s  ({replayed:,} transactions replayed, "
                f"{cpu:.2f} s CPU in this process)"
            )
            print(
                f"  feature state        {state.memory_bytes() / 2**20:>12.1f} MiB  "
                f"({state.customers:,} customers, {state.terminals:,} terminals)"
            )
            del state  # the next rebuild starts from nothing, as a restart does
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"process max RSS        {rss_mib:>12.1f} MiB  (pid {os.getpid()})")
    return 0


def _populate(url: str, customers: int, terminals: int, transactions: int) -> dict[str, float]:
    """Run in the child process: simulate, then store (see `_store`)."""
    started = time.perf_counter()
    config = SimulationConfig(n_customers=customers, n_terminals=terminals)
    per_day = customers * config.mean_tx_per_day
    days = math.ceil(transactions / per_day * 1.1) + 1  # a margin for the weekly rhythm
    history = simulate_history(config, start=datetime(2026, 1, 1, tzinfo=UTC), days=days)
    history = history.iloc[-transactions:]
    newest = history["timestamp"].iloc[-1]
    # Only the chargebacks known by the newest stored transaction: what the app would hold.
    labels = label_events(history)
    labels = labels[labels["known_at"] <= newest]
    simulated = time.perf_counter() - started
    figures = asyncio.run(_store(url, TransactionBatch.from_frame(history), labels))
    span = (newest - history["timestamp"].iloc[0]).total_seconds() / 86_400
    return {"simulate_seconds": simulated, "simulated_days": days, "days": span, **figures}


async def _store(url: str, batch: TransactionBatch, labels: pd.DataFrame) -> dict[str, float]:
    """Transactions through `store.insert_scored`, the writer's binary COPY, then the labels;
    then VACUUM ANALYZE, which autovacuum would otherwise run in the middle of a timed rebuild
    (and the first read after a bulk load would pay for setting the rows' hint bits)."""
    pool = await store.create_pool(url, setting="bench", timeout_seconds=10, max_size=2)
    try:
        started = time.perf_counter()
        async with pool.acquire() as conn:
            for start in range(0, len(batch), WRITE_ROWS):
                chunk = batch.take(slice(start, start + WRITE_ROWS))
                await store.insert_scored(conn, scored=_approved(chunk))
        copied = time.perf_counter()
        await store.insert_labels(pool, labels=labels)
        labelled = time.perf_counter()
        await pool.execute("VACUUM ANALYZE transaction, label")
        vacuumed = time.perf_counter()
    finally:
        await pool.close()
    return {
        "copy_seconds": copied - started,
        "label_seconds": labelled - copied,
        "vacuum_seconds": vacuumed - labelled,
    }


def _approved(batch: TransactionBatch) -> ScoredBatch:
    """The batch as the writer receives it, every transaction approved with score 0.

    The rebuild reads only the transaction and label tables, so the decision rows need no
    model; each transaction is received and decided at the moment it occurred.
    """
    n = len(batch)
    at = batch.timestamp.astype("datetime64[us]").astype(np.int64) / 1e6
    return ScoredBatch(
        transactions=batch,
        received_at=at,
        decided_at=at,
        probability=np.zeros(n, dtype=np.float32),
        score=np.zeros(n, dtype=np.int16),
        decision=np.full(n, APPROVE, dtype=object),
        rule=np.full(n, None, dtype=object),
        reasons=[[] for _ in range(n)],
        features=np.zeros((n, 0), dtype=np.float32),
        feature_names=(),
        model_version="bench-rebuild",
    )


def _report_populate(figures: dict[str, float]) -> None:
    print(
        f"simulated              {figures['simulate_seconds']:>12.1f} s  "
        f"({figures['simulated_days']:.0f} days; those stored span the last {figures['days']:.1f})"
    )
    print(
        f"populate (child)       {figures['copy_seconds']:>12.1f} s COPY  "
        f"{figures['label_seconds']:.1f} s labels  {figures['vacuum_seconds']:.1f} s VACUUM ANALYZE"
    )
