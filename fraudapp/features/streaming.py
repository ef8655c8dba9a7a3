"""Streaming executor: the feature state the scoring worker advances one micro-batch at a time.

Every customer and terminal is a dense integer id (one dict lookup per transaction) indexing rows
of a few numpy arrays, advanced by numba-compiled loops: a handful of Python objects whatever the
number of entities, so the garbage collector has nothing to walk. Same numbers as `batch`.
"""

from __future__ import annotations

import sys
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd
from numba import njit

from fraudapp.features.definitions import (
    A_CENTS_1D,
    A_CENTS_1H,
    A_CENTS_7D,
    A_CENTS_30D,
    A_COUNT_1D,
    A_COUNT_1H,
    A_COUNT_7D,
    A_COUNT_10MIN,
    A_COUNT_30D,
    A_LAT_30D,
    A_LOCATED_30D,
    A_LOG_30D,
    A_LON_30D,
    A_NEW_TERMINAL,
    A_ONLINE_30D,
    A_PREV_LAT,
    A_PREV_LON,
    A_PREV_TIME,
    A_SQUARES_30D,
    A_TERMINAL_COUNT_1D,
    A_TERMINAL_KNOWN_FRAUDS_30D,
    A_TERMINAL_LOG_30D,
    A_TERMINAL_RECENT_30D,
    A_TERMINALS_1H,
    COLUMN,
    DEFAULT_CONFIG,
    HORIZON_DAYS,
    HOUR_SLOTS,
    MINUTE_SLOTS,
    N_AGGREGATES,
    NO_PLACE,
    NO_TIME,
    RECENT,
    SQUARE_CAP_CENTS,
    TEN_MINUTE_SLOTS,
    TERMINAL_WINDOWS_DAYS,
    US_DAY,
    US_HOUR,
    US_MINUTE,
    US_TEN_MINUTES,
    FeatureConfig,
    cents_of,
    finish,
    log_units_of,
    micro_degrees,
    micros,
)
from fraudapp.transactions import TransactionBatch

# Fresh state is all zeros, so rows can be reserved with np.zeros at no cost until touched:
# bucket, day and time 0 (1970-01-01) stand for "never", far outside any window.
_HASH_MULTIPLIER = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64 (Fibonacci hashing)
_PAIR_BASE = 2**31  # pair key = customer * _PAIR_BASE + terminal

# One customer's state is one int32 row and one int64 row: contiguous, so a transaction touches
# a few cache lines. Each ring of buckets keeps its bucket ids beside its values.
_I_MINUTE_ID = 0
_I_MINUTE_COUNT = _I_MINUTE_ID + MINUTE_SLOTS
_I_TEN_ID = _I_MINUTE_COUNT + MINUTE_SLOTS
_I_TEN_COUNT = _I_TEN_ID + TEN_MINUTE_SLOTS
_I_HOUR_ID = _I_TEN_COUNT + TEN_MINUTE_SLOTS
_I_HOUR_COUNT = _I_HOUR_ID + HOUR_SLOTS
_I_DAY_ID = _I_HOUR_COUNT + HOUR_SLOTS
_I_DAY_COUNT = _I_DAY_ID + HORIZON_DAYS
_I_DAY_LOCATED = _I_DAY_COUNT + HORIZON_DAYS
_I_DAY_ONLINE = _I_DAY_LOCATED + HORIZON_DAYS
_I_RECENT_TERMINAL = _I_DAY_ONLINE + HORIZON_DAYS  # the last RECENT transactions, newest first
_I_RECENT_TEN = _I_RECENT_TERMINAL + RECENT
_I_PREV_LOCATED = _I_RECENT_TEN + RECENT
_I_PREV_LAT = _I_PREV_LOCATED + 1
_I_PREV_LON = _I_PREV_LAT + 1
_N_I32 = _I_PREV_LON + 1
_L_MINUTE_CENTS = 0
_L_TEN_CENTS = _L_MINUTE_CENTS + MINUTE_SLOTS
_L_HOUR_CENTS = _L_TEN_CENTS + TEN_MINUTE_SLOTS
_L_DAY_CENTS = _L_HOUR_CENTS + HOUR_SLOTS
_L_DAY_SQUARES = _L_DAY_CENTS + HORIZON_DAYS
_L_DAY_LAT = _L_DAY_SQUARES + HORIZON_DAYS
_L_DAY_LON = _L_DAY_LAT + HORIZON_DAYS
_L_DAY_LOG = _L_DAY_LON + HORIZON_DAYS
_L_PREV_TIME = _L_DAY_LOG + HORIZON_DAYS  # the latest transaction time (0 before any)
_N_I64 = _L_PREV_TIME + 1


@njit(cache=True)
def _sum_ring(ci, cl, id_at, count_at, cents_at, slots, bucket):
    """(count, cents) over the ring's buckets in (bucket - slots, bucket]."""
    count = cents = 0
    for s in range(slots):
        if bucket - slots < ci[id_at + s] <= bucket:
            count += ci[count_at + s]
            cents += cl[cents_at + s]
    return count, cents


@njit(cache=True)
def _add_to_ring(ci, cl, id_at, count_at, cents_at, slots, bucket, cents):
    """Add a transaction to its bucket; returns the slot, or -1 when the slot already holds a
    newer bucket (a transaction older than the ring, only possible out of stream order)."""
    s = bucket % slots
    if ci[id_at + s] < bucket:  # the slot's bucket has left the window: reuse it
        ci[id_at + s] = bucket
        ci[count_at + s] = 0
        cl[cents_at + s] = 0
    if ci[id_at + s] != bucket:
        return -1
    ci[count_at + s] += 1
    cl[cents_at + s] += cents
    return s


@njit(cache=True)
def _query_customer(ci, cl, t, out):
    """Write the aggregates of customer rows (ci, cl) as seen at time t into `out`."""
    latest = cl[_L_PREV_TIME]  # no bucket is newer: rings whose window it precedes are empty
    minute, ten, hour, day = t // US_MINUTE, t // US_TEN_MINUTES, t // US_HOUR, t // US_DAY
    for i in range(A_TERMINAL_COUNT_1D):
        out[i] = 0
    if latest // US_MINUTE > minute - MINUTE_SLOTS:
        out[A_COUNT_10MIN] = _sum_ring(
            ci, cl, _I_MINUTE_ID, _I_MINUTE_COUNT, _L_MINUTE_CENTS, MINUTE_SLOTS, minute
        )[0]
    if latest // US_TEN_MINUTES > ten - TEN_MINUTE_SLOTS:
        out[A_COUNT_1H], out[A_CENTS_1H] = _sum_ring(
            ci, cl, _I_TEN_ID, _I_TEN_COUNT, _L_TEN_CENTS, TEN_MINUTE_SLOTS, ten
        )
        distinct = 0
        for j in range(RECENT):
            if ten - TEN_MINUTE_SLOTS < ci[_I_RECENT_TEN + j] <= ten:
                repeated = False
                for k in range(j):
                    if (
                        ci[_I_RECENT_TERMINAL + k] == ci[_I_RECENT_TERMINAL + j]
                        and ten - TEN_MINUTE_SLOTS < ci[_I_RECENT_TEN + k] <= ten
                    ):
                        repeated = True
                        break
                distinct += not repeated
        out[A_TERMINALS_1H] = distinct
    if latest // US_HOUR > hour - HOUR_SLOTS:
        out[A_COUNT_1D], out[A_CENTS_1D] = _sum_ring(
            ci, cl, _I_HOUR_ID, _I_HOUR_COUNT, _L_HOUR_CENTS, HOUR_SLOTS, hour
        )
    if latest // US_DAY > day - HORIZON_DAYS:
        for s in range(HORIZON_DAYS):
            b = ci[_I_DAY_ID + s]
            if day - HORIZON_DAYS < b <= day:
                out[A_COUNT_30D] += ci[_I_DAY_COUNT + s]
                out[A_CENTS_30D] += cl[_L_DAY_CENTS + s]
                out[A_SQUARES_30D] += cl[_L_DAY_SQUARES + s]
                out[A_LOCATED_30D] += ci[_I_DAY_LOCATED + s]
                out[A_LAT_30D] += cl[_L_DAY_LAT + s]
                out[A_LON_30D] += cl[_L_DAY_LON + s]
                out[A_LOG_30D] += cl[_L_DAY_LOG + s]
                out[A_ONLINE_30D] += ci[_I_DAY_ONLINE + s]
                if b > day - 7:
                    out[A_COUNT_7D] += ci[_I_DAY_COUNT + s]
                    out[A_CENTS_7D] += cl[_L_DAY_CENTS + s]
    out[A_PREV_TIME] = latest
    out[A_PREV_LAT] = ci[_I_PREV_LAT] if ci[_I_PREV_LOCATED] else NO_PLACE
    out[A_PREV_LON] = ci[_I_PREV_LON] if ci[_I_PREV_LOCATED] else NO_PLACE


@njit(cache=True)
def _add_to_customer(ci, cl, t, terminal, cents, lat, lon, logs, online):
    _add_to_ring(
        ci, cl, _I_MINUTE_ID, _I_MINUTE_COUNT, _L_MINUTE_CENTS, MINUTE_SLOTS, t // US_MINUTE, cents
    )
    _add_to_ring(
        ci, cl, _I_TEN_ID, _I_TEN_COUNT, _L_TEN_CENTS, TEN_MINUTE_SLOTS, t // US_TEN_MINUTES, cents
    )
    _add_to_ring(ci, cl, _I_HOUR_ID, _I_HOUR_COUNT, _L_HOUR_CENTS, HOUR_SLOTS, t // US_HOUR, cents)
    day = t // US_DAY
    s = day % HORIZON_DAYS
    if ci[_I_DAY_ID + s] < day:
        ci[_I_DAY_LOCATED + s] = 0
        ci[_I_DAY_ONLINE + s] = 0
        cl[_L_DAY_LOG + s] = 0
        cl[_L_DAY_SQUARES + s] = 0
        cl[_L_DAY_LAT + s] = 0
        cl[_L_DAY_LON + s] = 0
    if _add_to_ring(ci, cl, _I_DAY_ID, _I_DAY_COUNT, _L_DAY_CENTS, HORIZON_DAYS, day, cents) >= 0:
        cl[_L_DAY_SQUARES + s] += min(cents, SQUARE_CAP_CENTS) ** 2
        cl[_L_DAY_LOG + s] += logs
        ci[_I_DAY_ONLINE + s] += online
        if lat != NO_PLACE:
            ci[_I_DAY_LOCATED + s] += 1
            cl[_L_DAY_LAT + s] += lat
            cl[_L_DAY_LON + s] += lon
    for j in range(RECENT - 1, 0, -1):
        ci[_I_RECENT_TERMINAL + j] = ci[_I_RECENT_TERMINAL + j - 1]
        ci[_I_RECENT_TEN + j] = ci[_I_RECENT_TEN + j - 1]
    ci[_I_RECENT_TERMINAL] = terminal
    ci[_I_RECENT_TEN] = t // US_TEN_MINUTES
    if t >= cl[_L_PREV_TIME]:
        cl[_L_PREV_TIME] = t
        ci[_I_PREV_LOCATED] = lat != NO_PLACE
        ci[_I_PREV_LAT] = lat
        ci[_I_PREV_LON] = lon


@njit(cache=True)
def _add_to_terminal(ti, day, transactions, frauds):
    """Terminal row ti = [day ids | transaction counts | fraud counts], one slot per day."""
    slots = len(ti) // 3
    s = day % slots
    if ti[s] < day:
        ti[s] = day
        ti[slots + s] = 0
        ti[2 * slots + s] = 0
    if ti[s] == day:
        ti[slots + s] += transactions
        ti[2 * slots + s] += frauds


@njit(cache=True)
def _query_terminal(ti, day, delay, out):
    slots = len(ti) // 3
    for k in range(A_TERMINAL_COUNT_1D, N_AGGREGATES):
        out[k] = 0
    for s in range(slots):
        age = day - ti[s]  # 0 = today
        if 0 <= age < HORIZON_DAYS:
            out[A_TERMINAL_KNOWN_FRAUDS_30D] += ti[2 * slots + s]
        for k, w in enumerate(TERMINAL_WINDOWS_DAYS):
            if delay < age <= delay + w:
                out[A_TERMINAL_COUNT_1D + 2 * k] += ti[slots + s]
                out[A_TERMINAL_COUNT_1D + 2 * k + 1] += ti[2 * slots + s]


@njit(cache=True)
def _add_to_terminal_amounts(tl, day, logs):
    """Terminal row tl = [day ids | transaction counts | log-unit sums], HORIZON_DAYS slots."""
    slots = len(tl) // 3
    s = day % slots
    if tl[s] < day:
        tl[s] = day
        tl[slots + s] = 0
        tl[2 * slots + s] = 0
    if tl[s] == day:
        tl[slots + s] += 1
        tl[2 * slots + s] += logs


@njit(cache=True)
def _query_terminal_amounts(tl, day, out):
    slots = len(tl) // 3
    count = total = 0
    for s in range(slots):
        if 0 <= day - tl[s] < slots:
            count += tl[slots + s]
            total += tl[2 * slots + s]
    out[A_TERMINAL_RECENT_30D] = count
    out[A_TERMINAL_LOG_30D] = total


@njit(cache=True)
def _visit_pair(keys, days, key, day):
    """(last day the pair was seen or 0, 1 if it is new to the table); records `day`.

    Open addressing with linear probing on keys stored + 1 (0 = a free slot); the caller keeps
    the table at most half full.
    """
    mask = len(keys) - 1
    h = key * _HASH_MULTIPLIER
    i = (h ^ (h >> 32)) & mask
    while keys[i] != key + 1:
        if keys[i] == 0:
            keys[i] = key + 1
            days[i] = day
            return 0, 1
        i = (i + 1) & mask
    last = days[i]
    days[i] = max(last, day)
    return last, 0


@njit(cache=True)
def _rehash(keys, days, new_keys, new_days, oldest_day):
    """Copy the pairs seen since `oldest_day` into an empty table; returns how many."""
    kept = 0
    for i in range(len(keys)):
        if keys[i] and days[i] >= oldest_day:
            _visit_pair(new_keys, new_days, keys[i] - 1, days[i])
            kept += 1
    return kept


@njit(cache=True)
def _apply_labels(ti, labels, upto, i):
    """Apply pending label changes from index i while known_at <= upto; returns the next i."""
    known, terminal, day, delta = labels
    while i < len(known) and known[i] <= upto:
        _add_to_terminal(ti[terminal[i]], day[i], 0, delta[i])
        i += 1
    return i


@njit(cache=True)
def _advance(
    customer,
    terminal,
    t,
    cents,
    lat,
    lon,
    logs,
    online,
    ci,
    cl,
    ti,
    tl,
    delay,
    keys,
    days,
    labels,
    out,
):
    """Advance the state over transactions in stream order, writing each one's aggregates into
    `out` first (when it has rows). Returns (label changes applied, pairs added)."""
    applied = added = 0
    for i in range(len(t)):
        applied = _apply_labels(ti, labels, t[i], applied)
        c, g, day = customer[i], terminal[i], t[i] // US_DAY
        last, new = _visit_pair(keys, days, c * _PAIR_BASE + g, day)
        added += new
        if len(out):
            _query_customer(ci[c], cl[c], t[i], out[i])
            out[i, A_NEW_TERMINAL] = last < day - (HORIZON_DAYS - 1)
            _query_terminal(ti[g], day, delay, out[i])
            _query_terminal_amounts(tl[g], day, out[i])
        _add_to_customer(ci[c], cl[c], t[i], g, cents[i], lat[i], lon[i], logs[i], online[i])
        _add_to_terminal(ti[g], day, 1, 0)
        _add_to_terminal_amounts(tl[g], day, logs[i])
    return applied, added


def _grown(rows: np.ndarray, needed: int) -> np.ndarray:
    """`rows` with room for `needed` rows: doubled, the new rows zero (untouched pages)."""
    if needed <= len(rows):
        return rows
    grown = np.zeros((max(needed, 2 * len(rows)), rows.shape[1]), dtype=rows.dtype)
    grown[: len(rows)] = rows
    return grown


def _dict_bytes(mapping: dict[str, int]) -> int:
    """Table, keys and (upper bound) int values of a str -> int dict."""
    return sys.getsizeof(mapping) + sum(map(sys.getsizeof, mapping)) + 32 * len(mapping)


# What the API's customer page shows: window values that do not depend on a new transaction.
_SNAPSHOT_FEATURES = (
    "customer_count_10min",
    "customer_count_1h",
    "customer_amount_sum_1h",
    "customer_terminals_1h",
    "customer_count_1d",
    "customer_mean_amount_1d",
    "customer_count_7d",
    "customer_mean_amount_7d",
    "customer_count_30d",
    "customer_mean_amount_30d",
    "customer_online_share_30d",
    "customer_seconds_since_prev",
)


class FeatureState:
    """Feature state of every customer and terminal seen. Not thread-safe: one owner (the
    scoring thread) advances it; snapshots read it between batches."""

    def __init__(
        self,
        config: FeatureConfig = DEFAULT_CONFIG,
        *,
        customers: int = 1 << 18,
        terminals: int = 1 << 16,
        pairs: int = 1 << 20,
    ) -> None:
        """`customers`, `terminals` and (customer, terminal) `pairs` reserve room. Reserved rows
        cost memory only once used (untouched zero pages), so the default is generous: growing
        past it doubles an array, a copy of every row that stalls scoring for a moment."""
        self.config = config
        self._slots = config.label_delay_days + HORIZON_DAYS + 1
        self._customer_ids: dict[str, int] = {}
        self._terminal_ids: dict[str, int] = {}
        self._ci = np.zeros((customers, _N_I32), dtype=np.int32)
        self._cl = np.zeros((customers, _N_I64), dtype=np.int64)
        self._ti = np.zeros((terminals, 3 * self._slots), dtype=np.int32)
        self._tl = np.zeros((terminals, 3 * HORIZON_DAYS), dtype=np.int64)
        self._pair_keys = np.zeros(1 << int(np.ceil(np.log2(max(pairs, 2)))), dtype=np.int64)
        self._pair_days = np.zeros(len(self._pair_keys), dtype=np.int32)
        self._pairs = 0
        # Label changes not yet applied (known_at after the latest transaction), by known_at.
        self._pending: tuple[np.ndarray, ...] = tuple(np.zeros(0, dtype=np.int64) for _ in range(4))
        # Transactions currently counted as fraud: id -> terminal * 2**32 + day.
        self._fraud: dict[str, int] = {}
        self._fraud_prune_at = 1024
        self._clock = NO_TIME  # the latest transaction time seen

    # -- public API -------------------------------------------------------------------------

    def transform(self, batch: TransactionBatch) -> np.ndarray:
        """Features (n, len(FEATURE_NAMES)) float64 of a batch in stream order, each row from
        the state just before its transaction; then the state includes the batch."""
        t = batch.timestamp.astype("datetime64[us]").view(np.int64)
        lat, lon = (
            micro_degrees(batch.terminal_lat, len(t)),
            micro_degrees(batch.terminal_lon, len(t)),
        )
        online = np.asarray(batch.channel == "online", dtype=bool)
        agg = self._advance(
            batch.customer_id, batch.terminal_id, t, batch.amount, lat, lon, online, True
        )
        return finish(
            agg, amount=batch.amount, time=t, lat=lat, lon=lon, online=online, config=self.config
        )

    def update(self, batch: TransactionBatch) -> None:
        """Include a batch in the state without computing its features (replay)."""
        t = batch.timestamp.astype("datetime64[us]").view(np.int64)
        lat, lon = (
            micro_degrees(batch.terminal_lat, len(t)),
            micro_degrees(batch.terminal_lon, len(t)),
        )
        online = np.asarray(batch.channel == "online", dtype=bool)
        self._advance(
            batch.customer_id, batch.terminal_id, t, batch.amount, lat, lon, online, False
        )

    def add_labels(self, labels: pd.DataFrame) -> None:
        """Take label events (LABEL_COLUMNS); each counts for transactions from its known_at on.

        Events of one transaction must arrive in known_at order (across calls too); an event
        known before the latest transaction seen applies at once, the others wait.
        """
        labels = labels[labels["known_at"].notna()]  # a verdict never known counts never
        if labels.empty:
            return
        known = micros(labels["known_at"])
        order = np.argsort(known, kind="stable")
        ids = labels["transaction_id"].to_numpy(dtype=object)[order]
        fraud = labels["is_fraud"].to_numpy(dtype=bool)[order]
        days = micros(labels["timestamp"])[order] // US_DAY
        terminals = labels["terminal_id"].to_numpy(dtype=object)[order]
        # Only events that may flip a status: those of transactions counted as fraud now or
        # called fraud by some event of this call.
        flagged = set(ids[fraud])
        counted = np.fromiter(map(self._fraud.__contains__, ids), dtype=bool, count=len(ids))
        named = np.fromiter(map(flagged.__contains__, ids), dtype=bool, count=len(ids))
        candidates = np.flatnonzero(counted | named)
        terminal = self._codes(self._terminal_ids, terminals[candidates])
        changes: list[tuple[int, int, int, int]] = []
        for i, g in zip(candidates.tolist(), terminal.tolist(), strict=True):
            tx = ids[i]
            if fraud[i] and tx not in self._fraud:
                self._fraud[tx] = g << 32 | int(days[i])
                changes.append((int(known[order[i]]), g, int(days[i]), 1))
            elif not fraud[i] and (packed := self._fraud.pop(tx, None)) is not None:
                changes.append((int(known[order[i]]), packed >> 32, packed & 0xFFFFFFFF, -1))
        self._ti = _grown(self._ti, len(self._terminal_ids))
        self._tl = _grown(self._tl, len(self._terminal_ids))
        if changes:
            new = np.array(changes, dtype=np.int64).T
            merged = [
                np.concatenate([old, col]) for old, col in zip(self._pending, new, strict=True)
            ]
            by_known = np.argsort(merged[0], kind="stable")
            self._pending = tuple(col[by_known] for col in merged)
            self._apply_pending(self._clock)
        if len(self._fraud) > self._fraud_prune_at:
            oldest = self._clock // US_DAY - self._slots
            self._fraud = {k: v for k, v in self._fraud.items() if v & 0xFFFFFFFF >= oldest}
            self._fraud_prune_at = 2 * len(self._fraud) + 1024

    def customer_snapshot(self, customer_id: str, now: Any) -> dict[str, float] | None:
        """The customer's current window values at `now` (None for an unknown customer)."""
        c = self._customer_ids.get(customer_id)
        if c is None:
            return None
        t = micros([now])
        agg = np.zeros((1, N_AGGREGATES), dtype=np.int64)
        _query_customer(self._ci[c], self._cl[c], t[0], agg[0])
        nowhere = np.array([NO_PLACE])
        row = finish(
            agg,
            amount=np.zeros(1),
            time=t,
            lat=nowhere,
            lon=nowhere,
            online=np.zeros(1, dtype=bool),
            config=self.config,
        )[0]
        snapshot = {name: float(row[COLUMN[name]]) for name in _SNAPSHOT_FEATURES}
        if agg[0, A_LOCATED_30D]:
            snapshot["home_lat"] = agg[0, A_LAT_30D] / agg[0, A_LOCATED_30D] / 1e6
            snapshot["home_lon"] = agg[0, A_LON_30D] / agg[0, A_LOCATED_30D] / 1e6
        return snapshot

    def memory_bytes(self) -> int:
        """Bytes the state occupies: rows in use (reserved rows are untouched zero pages), the
        pair table, pending labels and the id maps."""
        rows = len(self._customer_ids) * (self._ci[0].nbytes + self._cl[0].nbytes)
        rows += len(self._terminal_ids) * (self._ti[0].nbytes + self._tl[0].nbytes)
        arrays: list[np.ndarray] = [self._pair_keys, self._pair_days, *self._pending]
        return (
            rows
            + sum(a.nbytes for a in arrays)
            + _dict_bytes(self._customer_ids)
            + _dict_bytes(self._terminal_ids)
            + _dict_bytes(self._fraud)
        )

    @property
    def customers(self) -> int:
        return len(self._customer_ids)

    @property
    def terminals(self) -> int:
        return len(self._terminal_ids)

    @classmethod
    def from_history(
        cls,
        transactions: pd.DataFrame,
        labels: pd.DataFrame | None,
        *,
        config: FeatureConfig = DEFAULT_CONFIG,
        chunk_size: int = 262_144,
    ) -> FeatureState:
        """State after replaying a history (exact if it spans `config.history_days`)."""
        state = cls(  # room for a quarter more than the history holds, free until used
            config,
            customers=transactions["customer_id"].nunique() * 5 // 4 + 1024,
            terminals=transactions["terminal_id"].nunique() * 5 // 4 + 1024,
        )
        if labels is not None:
            state.add_labels(labels)  # all pending: each applies at its known_at in the replay
        t = micros(transactions["timestamp"])
        order = np.argsort(t, kind="stable")
        n = len(t)
        lat = micro_degrees(transactions.get("terminal_lat"), n)[order]
        lon = micro_degrees(transactions.get("terminal_lon"), n)[order]
        customers = transactions["customer_id"].to_numpy(dtype=object)[order]
        terminals = transactions["terminal_id"].to_numpy(dtype=object)[order]
        amount = transactions["amount"].to_numpy(dtype=np.float64)[order]
        channel = transactions.get("channel")
        online = (
            np.zeros(n, dtype=bool)
            if channel is None
            else (channel == "online").to_numpy(dtype=bool)[order]
        )
        t = t[order]
        for s in range(0, n, chunk_size):
            chunk = slice(s, s + chunk_size)
            state._advance(
                customers[chunk],
                terminals[chunk],
                t[chunk],
                amount[chunk],
                lat[chunk],
                lon[chunk],
                online[chunk],
                False,
            )
        return state

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _codes(mapping: dict[str, int], ids: np.ndarray) -> np.ndarray:
        """Dense ids of string ids, numbering new ones in order of appearance."""
        codes = np.fromiter(map(mapping.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        new = codes < 0
        if new.any():
            unseen = pd.unique(ids[new])
            numbers = range(len(mapping), len(mapping) + len(unseen))
            mapping.update(zip(unseen, numbers, strict=True))
            codes[new] = np.fromiter(map(mapping.__getitem__, ids[new]), dtype=np.int64)
        return codes

    def _apply_pending(self, upto: int) -> None:
        done = _apply_labels(self._ti, self._pending, upto, 0)
        if done:
            self._pending = tuple(col[done:] for col in self._pending)

    def _make_room_for_pairs(self, n: int) -> None:
        if 2 * (self._pairs + n) <= len(self._pair_keys):
            return
        # Rebuild, dropping pairs unseen for the whole horizon (they read as new anyway).
        oldest = self._clock // US_DAY - (HORIZON_DAYS - 1)
        live = int(np.count_nonzero(self._pair_days[self._pair_keys != 0] >= oldest))
        size = max(len(self._pair_keys), 1 << int(np.ceil(np.log2(3 * (live + n)))))
        keys, days = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int32)
        self._pairs = _rehash(self._pair_keys, self._pair_days, keys, days, oldest)
        self._pair_keys, self._pair_days = keys, days

    def _advance(
        self,
        customer_ids: np.ndarray,
        terminal_ids: np.ndarray,
        t: np.ndarray,
        amount: np.ndarray,
        lat: np.ndarray,
        lon: np.ndarray,
        online: np.ndarray,
        score: bool,
    ) -> np.ndarray:
        n = len(t)
        customer = self._codes(self._customer_ids, customer_ids)
        terminal = self._codes(self._terminal_ids, terminal_ids)
        self._ci = _grown(self._ci, len(self._customer_ids))
        self._cl = _grown(self._cl, len(self._customer_ids))
        self._ti = _grown(self._ti, len(self._terminal_ids))
        self._tl = _grown(self._tl, len(self._terminal_ids))
        self._make_room_for_pairs(n)
        out = np.empty((n if score else 0, N_AGGREGATES), dtype=np.int64)
        cents = cents_of(amount)
        applied, added = _advance(
            customer,
            terminal,
            t,
            cents,
            lat,
            lon,
            log_units_of(cents),
            np.asarray(online, dtype=np.int64),
            self._ci,
            self._cl,
            self._ti,
            self._tl,
            self.config.label_delay_days,
            self._pair_keys,
            self._pair_days,
            self._pending,
            out,
        )
        self._pairs += added
        if applied:
            self._pending = tuple(col[applied:] for col in self._pending)
        if n:
            self._clock = max(self._clock, int(t.max()))
        return out
