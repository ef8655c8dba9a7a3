"""Batch executor: the features of a whole history at once, vectorised (training, backfill).

Each customer's (or terminal's) transactions form a contiguous run once grouped, so a window is
a range found by binary search and its sums are prefix-sum differences; nothing loops per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fraudapp.errors import InvalidInput
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
    FEATURE_NAMES,
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
    unavailable_features,
)


def _prefix(values: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums; int64 wraps harmlessly since only differences are used."""
    out = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, dtype=np.int64, out=out[1:])
    return out


def _label_deltas(
    labels: pd.DataFrame, terminals: pd.Index
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Label events as changes of the fraud count: (terminal code, tx day, known_at, +1/-1).

    Events of one transaction apply in known_at order (ties in input order); each one that flips
    the transaction's status (not fraud at first) changes the count from its known_at on.
    """
    known = micros(labels["known_at"])
    by_known = np.argsort(known, kind="stable")
    tx = pd.factorize(labels["transaction_id"].to_numpy()[by_known])[0]
    by_tx = np.argsort(tx, kind="stable")
    grouped, tx = by_known[by_tx], tx[by_tx]
    fraud = labels["is_fraud"].to_numpy(dtype=bool)[grouped]
    first = np.ones(len(tx), dtype=bool)
    first[1:] = tx[1:] != tx[:-1]
    delta = fraud.astype(np.int64) - (~first & np.roll(fraud, 1))
    terminal = terminals.get_indexer(labels["terminal_id"].to_numpy()[grouped])
    keep = (delta != 0) & (terminal >= 0)
    day = micros(labels["timestamp"])[grouped] // US_DAY
    return terminal[keep], day[keep], known[grouped][keep], delta[keep]


def _batch_aggregates(
    t: np.ndarray,
    customer: np.ndarray,
    terminal: np.ndarray,
    cents: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    online: np.ndarray,
    deltas: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    delay: int,
) -> np.ndarray:
    """Aggregates for transactions already in stream order (t ascending)."""
    n = len(t)
    out = np.zeros((n, N_AGGREGATES), dtype=np.int64)
    if n == 0:
        return out
    pos = np.arange(n)

    def rank(buckets: np.ndarray, width: int) -> np.ndarray:
        """First stream position at or after the start of each bucket."""
        if len(buckets) == 0 or np.ptp(buckets) > 4 * n:  # few or sparse: search each bound
            return np.searchsorted(t, buckets * width)
        low, high = int(buckets.min()), int(buckets.max())
        return np.searchsorted(t, np.arange(low, high + 1) * width)[buckets - low]

    # Customers: positions grouped by customer, in stream order within each customer, so a
    # window is the contiguous run [start, pos) and its sums are prefix-sum differences.
    by_c = np.argsort(customer, kind="stable")
    c, tc = customer[by_c], t[by_c]
    key = c * n + by_c

    def since(buckets: np.ndarray, width: int) -> np.ndarray:
        return np.searchsorted(key, c * n + rank(buckets, width))

    minute, ten, hour, day = tc // US_MINUTE, tc // US_TEN_MINUTES, tc // US_HOUR, tc // US_DAY
    start_10min = since(minute - (MINUTE_SLOTS - 1), US_MINUTE)
    start_1h = since(ten - (TEN_MINUTE_SLOTS - 1), US_TEN_MINUTES)
    start_1d = since(hour - (HOUR_SLOTS - 1), US_HOUR)
    start_7d = since(day - 6, US_DAY)
    start_30d = since(day - (HORIZON_DAYS - 1), US_DAY)
    logs = log_units_of(cents)
    cc, la, lo = cents[by_c], lat[by_c], lon[by_c]
    located = la != NO_PLACE
    total = _prefix(cc)
    agg = np.empty((n, A_TERMINAL_COUNT_1D), dtype=np.int64)
    agg[:, A_COUNT_10MIN] = pos - start_10min
    agg[:, A_COUNT_1H] = pos - start_1h
    agg[:, A_CENTS_1H] = total[pos] - total[start_1h]
    agg[:, A_COUNT_1D] = pos - start_1d
    agg[:, A_CENTS_1D] = total[pos] - total[start_1d]
    agg[:, A_COUNT_7D] = pos - start_7d
    agg[:, A_CENTS_7D] = total[pos] - total[start_7d]
    agg[:, A_COUNT_30D] = pos - start_30d
    agg[:, A_CENTS_30D] = total[pos] - total[start_30d]
    for column, values in (
        (A_SQUARES_30D, np.minimum(cc, SQUARE_CAP_CENTS) ** 2),
        (A_LOCATED_30D, located),
        (A_LAT_30D, np.where(located, la, 0)),
        (A_LON_30D, np.where(located, lo, 0)),
        (A_LOG_30D, logs[by_c]),
        (A_ONLINE_30D, online[by_c]),
    ):
        sums = _prefix(values)
        agg[:, column] = sums[pos] - sums[start_30d]

    same_as_prev = np.zeros(n, dtype=bool)
    same_as_prev[1:] = c[1:] == c[:-1]
    agg[:, A_PREV_TIME] = np.where(same_as_prev, np.roll(tc, 1), NO_TIME)
    agg[:, A_PREV_LAT] = np.where(same_as_prev, np.roll(la, 1), NO_PLACE)
    agg[:, A_PREV_LON] = np.where(same_as_prev, np.roll(lo, 1), NO_PLACE)

    # (customer, terminal) pairs: previous and next visit of the same pair.
    pair = c * (int(terminal.max()) + 1) + terminal[by_c]
    by_p = np.argsort(pair, kind="stable")
    repeat = pair[by_p][1:] == pair[by_p][:-1]
    prev_visit = np.full(n, -1)
    prev_visit[by_p[1:][repeat]] = by_p[:-1][repeat]
    next_visit = np.full(n, n)
    next_visit[by_p[:-1][repeat]] = by_p[1:][repeat]
    agg[:, A_NEW_TERMINAL] = (prev_visit < 0) | (day[prev_visit] < day - (HORIZON_DAYS - 1))
    # Distinct terminals among the last min(count_1h, RECENT) earlier transactions: count each
    # position whose pair does not come again before the scored transaction.
    recent = np.minimum(agg[:, A_COUNT_1H], RECENT)
    distinct = np.zeros(n, dtype=np.int64)
    for back in range(1, RECENT + 1):
        distinct += (back <= recent) & (next_visit[np.maximum(pos - back, 0)] >= pos)
    agg[:, A_TERMINALS_1H] = distinct
    out[by_c, :A_TERMINAL_COUNT_1D] = agg

    # Terminals: grouped by terminal, in stream order within each; windows are whole days.
    by_g = np.argsort(terminal, kind="stable")
    g = terminal[by_g]
    key_g = g * n + by_g
    day_g = t[by_g] // US_DAY
    terminal_of, event_day, event_known, delta = deltas
    event_from = np.searchsorted(t, event_known)

    def frauds_known(after: int, until: int) -> np.ndarray:
        """Per position: label changes of day-X transactions counting on days X+after ..
        X+until, from their known_at on. Each event adds to one run of positions."""
        run_from = np.maximum(event_from, rank(event_day + after, US_DAY))
        run_start = np.searchsorted(key_g, terminal_of * n + run_from)
        run_end = np.searchsorted(key_g, terminal_of * n + rank(event_day + until + 1, US_DAY))
        keep = run_start < run_end
        change = np.zeros(n + 1, dtype=np.int64)
        np.add.at(change, run_start[keep], delta[keep])
        np.add.at(change, run_end[keep], -delta[keep])
        return np.cumsum(change[:-1])

    for k, w in enumerate(TERMINAL_WINDOWS_DAYS):
        first = np.searchsorted(key_g, g * n + rank(day_g - delay - w, US_DAY))
        end = np.searchsorted(key_g, g * n + rank(day_g - delay, US_DAY))
        out[by_g, A_TERMINAL_COUNT_1D + 2 * k] = end - first
        out[by_g, A_TERMINAL_COUNT_1D + 2 * k + 1] = frauds_known(delay + 1, delay + w)
    out[by_g, A_TERMINAL_KNOWN_FRAUDS_30D] = frauds_known(0, HORIZON_DAYS - 1)
    # Earlier transactions at the terminal from the start of day D-29 (no delay).
    first = np.searchsorted(key_g, g * n + rank(day_g - (HORIZON_DAYS - 1), US_DAY))
    position = np.arange(n)
    out[by_g, A_TERMINAL_RECENT_30D] = position - first
    logs_g = _prefix(logs[by_g])
    out[by_g, A_TERMINAL_LOG_30D] = logs_g[position] - logs_g[first]
    return out


def compute_features(
    transactions: pd.DataFrame,
    labels: pd.DataFrame | None,
    *,
    config: FeatureConfig = DEFAULT_CONFIG,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Features of every transaction of a history, one row each (same index and order).

    `names` defaults to `available_features(transactions.columns)`; `labels` (LABEL_COLUMNS)
    may be None, and then every terminal risk is 0.
    """
    left_out = unavailable_features(transactions.columns)
    names = [n for n in FEATURE_NAMES if n not in left_out] if names is None else list(names)
    wrong = {
        n: left_out.get(n, "unknown feature")
        for n in names
        if n not in FEATURE_NAMES or n in left_out
    }
    if wrong:
        raise InvalidInput(f"cannot compute features {wrong}")
    n = len(transactions)
    t = micros(transactions["timestamp"])
    order = np.argsort(t, kind="stable")
    customer = pd.factorize(transactions["customer_id"])[0]
    terminal, terminals = pd.factorize(transactions["terminal_id"])
    lat = micro_degrees(transactions.get("terminal_lat"), n)
    lon = micro_degrees(transactions.get("terminal_lon"), n)
    amount = transactions["amount"].to_numpy(dtype=np.float64)
    cents = cents_of(amount)
    channel = transactions.get("channel")
    online = np.zeros(n, dtype=bool) if channel is None else (channel == "online").to_numpy(bool)
    labels = None if labels is None else labels[labels["known_at"].notna()]  # never known
    none = np.zeros(0, dtype=np.int64)
    deltas = (none, none, none, none)
    if labels is not None and len(labels):
        deltas = _label_deltas(labels, pd.Index(terminals))
    agg = np.empty((n, N_AGGREGATES), dtype=np.int64)
    agg[order] = _batch_aggregates(
        t[order],
        customer[order],
        terminal[order],
        cents[order],
        lat[order],
        lon[order],
        online[order],
        deltas,
        config.label_delay_days,
    )
    features = finish(agg, amount=amount, time=t, lat=lat, lon=lon, online=online, config=config)
    columns = [COLUMN[name] for name in names]
    # F-ordered columns, handed over without the copy pandas makes by default.
    return pd.DataFrame(features[:, columns], index=transactions.index, columns=names, copy=False)
