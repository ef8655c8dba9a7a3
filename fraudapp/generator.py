"""Simulated card traffic: the first stage of the flow, feeding the scoring queue.

Offline, `simulate_history` stacks day blocks of `fraudapp.simulation` into a history frame with
its truth (`fraudapp simulate` writes it to a file); live, `LiveSimulator` replays the same day
blocks on an accelerated simulated clock into the bounded queue and emits chargebacks when due.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from fraudapp.simulation.traffic import NAT, DayBlock, generate_day
from fraudapp.simulation.world import DAY_US, SCENARIOS, SimulationConfig, World, build_world
from fraudapp.transactions import CHANNELS, LABEL_COLUMNS, TransactionBatch

__all__ = [
    "SCENARIOS",
    "TRUTH_COLUMNS",
    "BatchQueue",
    "LiveSimulator",
    "SimulationConfig",
    "World",
    "add_cli",
    "build_world",
    "describe_history",
    "label_events",
    "live_run_prefix",
    "simulate_command",
    "simulate_history",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRUTH_COLUMNS: tuple[str, ...] = ("is_fraud", "scenario", "reported_at")


def _transaction_ids(prefix: str, day: int, n: int) -> pa.Array:
    """f"{prefix}{day:05d}-{seq:08d}" for seq in range(n), written as digits without a loop."""
    if n >= 10**8 or not 0 <= day < 10**5:
        raise ValueError(f"day {day} with {n} transactions does not fit the id format")
    head = np.frombuffer(f"{prefix}{day:05d}-".encode(), dtype=np.uint8)
    width = len(head) + 8
    text = np.empty((n, width), dtype=np.uint8)
    text[:, : len(head)] = head
    seq = np.arange(n, dtype=np.int64)
    for column in range(width - 1, len(head) - 1, -1):
        text[:, column] = 48 + seq % 10
        seq //= 10
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(text)])
    return raw.cast(pa.string())


def live_run_prefix(started_at: datetime) -> str:
    """The id prefix of a live run started then, e.g. "L20250101T120000-"."""
    return started_at.astimezone(UTC).strftime("L%Y%m%dT%H%M%S-")


def _utc(micros: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(micros.view("datetime64[us]")).tz_localize("UTC")


def _to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def history_frame(world: World, blocks: list[DayBlock], prefix: str) -> pd.DataFrame:
    """Day blocks as one frame: TRANSACTION_COLUMNS, then the truth columns."""

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(block, name) for block in blocks])

    customer, terminal = column("customer"), column("terminal")
    reported_at = column("reported_at")
    strings = world.strings
    table = pa.table(
        {
            "transaction_id": pa.chunked_array(
                [_transaction_ids(prefix, b.day, len(b)) for b in blocks], pa.string()
            ),
            "timestamp": pa.array(column("timestamp"), pa.timestamp("us", tz="UTC")),
            "customer_id": strings["customer_id"].take(customer),
            "terminal_id": strings["terminal_id"].take(terminal),
            "merchant_category": strings["merchant_category"].take(terminal),
            "amount": column("amount"),
            "currency": pa.array(np.full(len(customer), world.config.currency, dtype=object)),
            "channel": strings["channel"].take(column("online").astype(np.int8)),
            "terminal_lat": world.terminal_lat[terminal],
            "terminal_lon": world.terminal_lon[terminal],
            "is_fraud": column("scenario") > 0,
            "scenario": column("scenario"),
            "reported_at": pa.array(
                reported_at, pa.timestamp("us", tz="UTC"), mask=reported_at == NAT
            ),
        }
    )
    return table.to_pandas()


def simulate_history(
    config: SimulationConfig, *, start: datetime, days: int, world: World | None = None
) -> pd.DataFrame:
    """`days` days of transactions from `start` (naive means UTC), one row each, by time.

    Columns: TRANSACTION_COLUMNS, then the truth the model must never see: `is_fraud` (bool),
    `scenario` (int8, 0 legit, 1..6 as in SCENARIOS) and `reported_at` (when the chargeback
    arrives, NaT when never). Timestamps are datetime64[us, UTC]. Pass `world` to reuse one.
    """
    world = world if world is not None else build_world(config)
    start_us = _to_micros(start)
    blocks = [generate_day(world, start=start_us, day=day) for day in range(days)]
    return history_frame(world, blocks, config.id_prefix)


def label_events(history: pd.DataFrame) -> pd.DataFrame:
    """The chargebacks of a simulated history as label events (LABEL_COLUMNS), by known_at."""
    rows = history.loc[history["is_fraud"].to_numpy(bool) & history["reported_at"].notna()]
    labels = pd.DataFrame(
        {
            "transaction_id": rows["transaction_id"],
            "timestamp": rows["timestamp"],
            "customer_id": rows["customer_id"],
            "terminal_id": rows["terminal_id"],
            "is_fraud": np.ones(len(rows), dtype=bool),
            "known_at": rows["reported_at"],
            "source": pd.Series("chargeback", index=rows.index, dtype="str"),
        },
        columns=list(LABEL_COLUMNS),
    )
    labels = labels.sort_values(["known_at", "timestamp", "transaction_id"], kind="stable")
    return labels.reset_index(drop=True)


FrameSink = Callable[[pd.DataFrame], Awaitable[None]]


class BatchQueue(Protocol):
    """What the live simulator puts chunks on: an asyncio.Queue, or a facade over one."""

    def full(self) -> bool: ...

    def put_nowait(self, batch: TransactionBatch) -> None: ...

    async def put(self, batch: TransactionBatch) -> None: ...


@dataclass(slots=True, eq=False)
class _LiveBlock:
    batch: TransactionBatch
    timestamp: np.ndarray  # int64 microseconds, to find what is due
    scenario: np.ndarray
    reported_at: np.ndarray
    position: int = 0


def _live_block(world: World, *, start: int, day: int, prefix: str) -> _LiveBlock:
    block = generate_day(world, start=start, day=day)
    n = len(block)
    batch = TransactionBatch(
        transaction_id=_transaction_ids(prefix, day, n).to_numpy(zero_copy_only=False),
        timestamp=block.timestamp.view("datetime64[us]"),
        customer_id=world.customer_ids[block.customer],
        terminal_id=world.terminal_ids[block.terminal],
        merchant_category=world.terminal_category[block.terminal],
        amount=block.amount,
        currency=np.full(n, world.config.currency, dtype=object),
        channel=np.array(CHANNELS, dtype=object)[block.online.astype(np.intp)],
        terminal_lat=world.terminal_lat[block.terminal],
        terminal_lon=world.terminal_lon[block.terminal],
    )
    return _LiveBlock(batch, block.timestamp, block.scenario, block.reported_at)


class _PendingLabels:
    """Chargebacks waiting for the simulated clock, ordered by when they become known."""

    def __init__(self) -> None:
        self._known = np.empty(0, dtype=np.int64)
        self._rows = TransactionBatch.empty()

    def add(self, block: _LiveBlock) -> None:
        fraud = np.flatnonzero(block.reported_at != NAT)
        known = np.concatenate([self._known, block.reported_at[fraud]])
        rows = TransactionBatch.concat([self._rows, block.batch.take(fraud)])
        order = np.argsort(known, kind="stable")
        self._known, self._rows = known[order], rows.take(order)

    def pop_due(self, now: int) -> pd.DataFrame | None:
        n = int(np.searchsorted(self._known, now, side="right"))
        if n == 0:
            return None
        due, known = self._rows.take(slice(0, n)), self._known[:n]
        self._known, self._rows = self._known[n:], self._rows.take(slice(n, None))
        return pd.DataFrame(
            {
                "transaction_id": due.transaction_id,
                "timestamp": _utc(due.timestamp.view(np.int64)),
                "customer_id": due.customer_id,
                "terminal_id": due.terminal_id,
                "is_fraud": np.ones(n, dtype=bool),
                "known_at": _utc(known),
                "source": np.full(n, "chargeback", dtype=object),
            }
        )


class LiveSimulator:
    """Replays the simulated world into the scoring queue on an accelerated simulated clock.

    The clock starts at `start` when `run` starts and runs at `acceleration` x real time; give
    either `acceleration` or `rate` (tx/s, so acceleration = rate / natural_rate). Day blocks are
    the ones `simulate_history(config, start=start, ...)` makes, generated in a worker thread one
    day ahead; each transaction is put on the queue, in chunks of what fell due since the last
    tick, once the clock passes its timestamp. Ids read f"{run_prefix}{day:05d}-{seq:08d}": give
    each run its own prefix (`live_run_prefix(now)`) so ids never collide with earlier runs.
    A full queue or a late day block stops the simulated clock while the producer waits, so
    nothing is lost or squeezed together. Building the world takes seconds for 100,000
    customers: construct the simulator in a thread from async code (or pass a built `world`).
    """

    def __init__(
        self,
        config: SimulationConfig,
        *,
        start: datetime,
        run_prefix: str,
        rate: float | None = None,
        acceleration: float | None = None,
        tick_seconds: float = 0.02,
        max_chunk: int = 2048,
        clock: Callable[[], float] = time.monotonic,
        world: World | None = None,
    ) -> None:
        if (rate is None) == (acceleration is None):
            raise ValueError("give exactly one of rate (tx/s) or acceleration")
        self._world = world if world is not None else build_world(config)
        self._start = _to_micros(start)
        self._prefix = run_prefix
        self._tick = tick_seconds
        self._max_chunk = max_chunk
        self._clock = clock
        self._acceleration = 1.0
        self._sim_anchor = float(self._start)
        self._real_anchor = clock()
        self._held_since: float | None = None
        self._running = False
        self._paused = False
        self._stopping = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._prefetch: dict[int, asyncio.Task[_LiveBlock]] = {}
        self._day = 0  # the next day block to take
        self._current: _LiveBlock | None = None
        self._labels = _PendingLabels()
        self.emitted_transactions = 0
        self.emitted_labels = 0
        self.generated_days = 0
        if rate is not None:
            self.rate = rate
        elif acceleration is not None:
            self.acceleration = acceleration

    @property
    def natural_rate(self) -> float:
        return self._world.natural_rate

    @property
    def acceleration(self) -> float:
        return self._acceleration

    @acceleration.setter
    def acceleration(self, value: float) -> None:
        if not value > 0:
            raise ValueError("acceleration must be > 0")
        self._reanchor()
        self._acceleration = float(value)

    @property
    def rate(self) -> float:
        """Transactions per second, on average over the world's day and week."""
        return self._acceleration * self.natural_rate

    @rate.setter
    def rate(self, value: float) -> None:
        if not value > 0:
            raise ValueError("rate must be > 0")
        self.acceleration = value / self.natural_rate

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def sim_time(self) -> datetime:
        """The simulated clock, UTC."""
        return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(self._now()))

    def pause(self) -> None:
        self._reanchor()
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self._real_anchor = self._clock()
        if self._held_since is not None:
            self._held_since = self._real_anchor
        self._paused = False
        self._resumed.set()

    def stop(self) -> None:
        """Make `run` return after the chunk in hand; what was put on the queue stays there."""
        self._stopping = True
        self._resumed.set()

    def _now(self) -> float:
        if not self._running or self._paused:
            return self._sim_anchor
        real = self._clock() if self._held_since is None else self._held_since
        return self._sim_anchor + (real - self._real_anchor) * self._acceleration * 1e6

    def _reanchor(self) -> None:
        self._sim_anchor, self._real_anchor = self._now(), self._clock()
        if self._held_since is not None:
            self._held_since = self._real_anchor

    async def _held(self, waiting: Awaitable[T]) -> T:
        """Await with the simulated clock standing still (a full queue, a late day block)."""
        self._held_since = self._clock()
        try:
            return await waiting
        finally:
            self._real_anchor += self._clock() - self._held_since
            self._held_since = None

    async def _block(self, day: int) -> _LiveBlock:
        task = self._prefetch.pop(day, None) or self._generate(day)
        block = await self._held(task)
        self._prefetch[day + 1] = self._generate(day + 1)
        return block

    def _generate(self, day: int) -> asyncio.Task[_LiveBlock]:
        work = asyncio.to_thread(
            _live_block, self._world, start=self._start, day=day, prefix=self._prefix
        )
        return asyncio.create_task(work, name=f"generator.day-{day}")

    async def run(
        self,
        queue: BatchQueue,
        on_labels: FrameSink,
        on_truth: FrameSink | None = None,
    ) -> None:
        """Produce until `stop()` or cancellation; a later `run` carries on where this one ended.

        `on_labels` is awaited with each tick's due chargebacks (LABEL_COLUMNS), never before
        their transactions were queued; `on_truth`, when given, with (transaction_id, scenario)
        of the frauds in each chunk just queued (for the simulation_truth table).
        """
        self._running, self._stopping = True, False
        self._real_anchor = self._clock()
        logger.info(
            "generator.live_started rate=%.1f acceleration=%.1f", self.rate, self._acceleration
        )
        try:
            while not self._stopping:
                if self._paused:
                    await self._resumed.wait()
                    continue
                now = self._now()
                queued_until = await self._emit_due(queue, now, on_truth)
                if self._stopping:
                    break
                # Everything up to `queued_until` is queued: these chargebacks follow their
                # transactions.
                due_labels = self._labels.pop_due(queued_until)
                if due_labels is not None:
                    await on_labels(due_labels)
                    self.emitted_labels += len(due_labels)
                # Behind the clock (a day block at a time): go on at once, else wait a tick.
                await asyncio.sleep(0 if queued_until < now else self._tick)
        finally:
            self._reanchor()
            self._running = False
            for task in self._prefetch.values():
                task.cancel()
            self._prefetch.clear()
            logger.info(
                "generator.live_stopped transactions=%d labels=%d",
                self.emitted_transactions,
                self.emitted_labels,
            )

    async def _emit_due(self, queue: BatchQueue, now: float, on_truth: FrameSink | None) -> int:
        """Queue what is stamped up to `now`, but at most to the end of one day block.

        Returns the time up to which everything is queued, so a clock far ahead (a huge rate)
        still lets chargebacks and other tasks in between day blocks.
        """
        block = self._current
        if block is None or block.position == len(block.timestamp):
            if self._start + self._day * DAY_US > now:
                return int(now)
            block = self._current = await self._block(self._day)
            self._labels.add(block)
            self._day += 1
            self.generated_days = self._day
        horizon = min(int(now), self._start + self._day * DAY_US - 1)
        due = int(np.searchsorted(block.timestamp, horizon, side="right"))
        await self._emit(queue, block, due, on_truth)
        return horizon

    async def _emit(
        self,
        queue: BatchQueue,
        block: _LiveBlock,
        due: int,
        on_truth: FrameSink | None,
    ) -> None:
        while block.position < due and not self._stopping:
            low, high = block.position, min(due, block.position + self._max_chunk)
            chunk = block.batch.take(slice(low, high))
            if queue.full():
                await self._held(queue.put(chunk))
            else:
                queue.put_nowait(chunk)
                await asyncio.sleep(0)  # a burst of chunks still lets the consumer run
            block.position = high
            self.emitted_transactions += high - low
            fraud = np.flatnonzero(block.scenario[low:high])
            if on_truth is not None and len(fraud):
                truth = {
                    "transaction_id": chunk.transaction_id[fraud],
                    "scenario": block.scenario[low:high][fraud],
                }
                await on_truth(pd.DataFrame(truth))


def describe_history(history: pd.DataFrame) -> str:
    """A plain-text summary of a simulated history: volumes, frauds, label delays."""
    n = len(history)
    fraud = history["is_fraud"].to_numpy(bool)
    lines = [
        f"transactions: {n:,}  customers: {history['customer_id'].nunique():,}  "
        f"terminals: {history['terminal_id'].nunique():,}",
        f"period: {history['timestamp'].min()} .. {history['timestamp'].max()}",
        f"frauds: {int(fraud.sum()):,}  fraud rate: {fraud.mean() if n else 0.0:.4%}",
    ]
    counts = history["scenario"].value_counts()
    for code, name in SCENARIOS.items():
        count = int(counts.get(code, 0))
        lines.append(f"  {code} {name:<22} {count:>10,}  {count / max(n, 1):8.4%}")
    delay = (history["reported_at"] - history["timestamp"])[fraud].dropna()
    days = delay.dt.total_seconds().to_numpy() / 86_400
    if len(days):
        quantiles = np.quantile(days, [0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
        lines.append(
            "label delay days: "
            + "  ".join(
                f"q{int(q * 100)}={v:.1f}"
                for q, v in zip((0.1, 0.25, 0.5, 0.75, 0.9, 0.99), quantiles, strict=True)
            )
        )
    never = 1 - len(days) / fraud.sum() if fraud.sum() else 0.0
    lines.append(f"never reported: {never:.1%} of frauds")
    return "\n".join(lines)


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `simulate`: write a simulated history with its truth and print a summary."""
    parser = subparsers.add_parser(
        "simulate",
        help="write simulated transactions (with truth and reported_at) to .parquet or .csv",
        description="Simulate a card-payment history. The file holds the transaction columns "
        "plus is_fraud, scenario and reported_at (chargeback time, empty when never reported), "
        "so label events are derivable: fraudapp.generator.label_events(history).",
    )
    defaults = SimulationConfig()
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--customers", type=int, default=defaults.n_customers)
    parser.add_argument("--terminals", type=int, default=defaults.n_terminals)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--fraud-rate", type=float, default=defaults.fraud_rate)
    parser.add_argument("--never-reported-share", type=float, default=defaults.never_reported_share)
    parser.add_argument(
        "--start",
        type=datetime.fromisoformat,
        default=datetime(2025, 1, 1, tzinfo=UTC),
        help="first day, ISO 8601 (naive means UTC); default 2025-01-01",
    )
    parser.add_argument("--out", type=Path, default=Path("history.parquet"))
    parser.set_defaults(handler=simulate_command)


def simulate_command(args: argparse.Namespace) -> int:
    """Handler of `fraudapp simulate`; prints the summary and throughput, returns the exit code."""
    if args.out.suffix not in (".parquet", ".csv"):
        print(f"--out must end in .parquet or .csv, not {args.out.name!r}", file=sys.stderr)
        return 2
    config = SimulationConfig(
        seed=args.seed,
        n_customers=args.customers,
        n_terminals=args.terminals,
        fraud_rate=args.fraud_rate,
        never_reported_share=args.never_reported_share,
    )
    began = time.perf_counter()
    history = simulate_history(config, start=args.start, days=args.days)
    if args.out.suffix == ".parquet":
        history.to_parquet(args.out, index=False)
    else:
        history.to_csv(args.out, index=False)
    wall = time.perf_counter() - began
    print(describe_history(history))
    print(f"wrote {args.out} in {wall:.2f} s: {len(history) / wall * 60:,.0f} tx/min")
    return 0
