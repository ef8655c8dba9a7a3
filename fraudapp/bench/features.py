"""Feature benchmark: both executors of `fraudapp.features` on simulated history (`fraudapp bench
features`). Prints batch seconds, streaming µs per transaction, rebuild seconds and state memory.
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import datetime

import numpy as np

from fraudapp.features import FeatureConfig, FeatureState, compute_features
from fraudapp.generator import SimulationConfig, label_events, simulate_history
from fraudapp.transactions import TransactionBatch


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("features", help="time batch and streaming feature computation")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--terminals", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=5, help="simulated days (~2 tx/customer/day)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = FeatureConfig()
    sim = SimulationConfig(n_customers=args.customers, n_terminals=args.terminals)
    started = time.perf_counter()
    history = simulate_history(sim, start=datetime(2024, 1, 1), days=args.days)
    labels = label_events(history)
    print(
        f"history: {len(history):,} transactions, {len(labels):,} label events, "
        f"{args.customers:,} customers, {args.terminals:,} terminals "
        f"(simulated in {time.perf_counter() - started:.1f} s)"
    )
    FeatureState().transform(TransactionBatch.from_frame(history.iloc[:10]))  # numba compile

    started, cpu = time.perf_counter(), time.process_time()
    compute_features(history, labels, config=config)
    print(
        f"batch compute_features: {time.perf_counter() - started:.2f} s "
        f"({time.process_time() - cpu:.2f} s CPU)"
    )

    batch = TransactionBatch.from_frame(history)
    known = labels["known_at"].to_numpy()
    label_at = history["timestamp"].to_numpy()
    state = FeatureState(config)
    gc.collect()
    busy = cpu = 0.0
    added = 0
    for start in range(0, len(batch), args.batch_size):
        chunk = batch.take(slice(start, start + args.batch_size))
        due = int(np.searchsorted(known, label_at[min(start + args.batch_size, len(batch)) - 1]))
        tick, tock = time.perf_counter(), time.process_time()
        if due > added:
            state.add_labels(labels.iloc[added:due])
            added = due
        state.transform(chunk)
        busy += time.perf_counter() - tick
        cpu += time.process_time() - tock
    print(
        f"streaming transform + add_labels, batches of {args.batch_size}, from an empty state: "
        f"{busy / len(batch) * 1e6:.2f} µs/tx ({cpu / len(batch) * 1e6:.2f} µs CPU/tx, "
        f"{len(batch) / busy:,.0f} tx/s)"
    )
    print(
        f"state memory: {state.memory_bytes() / 2**20:.0f} MiB for {state.customers:,} "
        f"customers and {state.terminals:,} terminals"
    )

    started, cpu = time.perf_counter(), time.process_time()
    rebuilt = FeatureState.from_history(history, labels, config=config)
    print(
        f"rebuild from {len(history):,} transactions: {time.perf_counter() - started:.2f} s "
        f"({time.process_time() - cpu:.2f} s CPU); state {rebuilt.memory_bytes() / 2**20:.0f} MiB"
    )
    # Steady state: a state rebuilt from the first 80 % scores the last 20 %.
    cut = len(history) * 4 // 5
    warm = FeatureState.from_history(history.iloc[:cut], labels, config=config)
    tail = batch.take(slice(cut, len(batch)))
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(tail), args.batch_size):
        warm.transform(tail.take(slice(start, start + args.batch_size)))
    print(
        f"streaming transform on a warm state ({len(tail):,} tx): "
        f"{(time.perf_counter() - started) / len(tail) * 1e6:.2f} µs/tx "
        f"({(time.process_time() - cpu) / len(tail) * 1e6:.2f} µs CPU/tx)"
    )
    return 0
