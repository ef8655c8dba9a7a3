"""A day block of simulated traffic: legitimate purchases plus the six tagged fraud scenarios.

`generate_day` is the one generator both modes share: offline history stacks day blocks, the
live simulator replays them. A block depends only on (seed, start, day), so any day can be made
on its own; multi-day frauds (skimmed terminals, stolen credentials) are planned per start day
from their own random streams and looked up by every day they cover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fraudapp.simulation.world import (
    DAY_US,
    HOUR_US,
    STREAM_DAY,
    STREAM_SKIMMED,
    STREAM_STOLEN,
    World,
    stream_rng,
)

NAT = np.iinfo(np.int64).min  # reported_at of a fraud never reported
_MINUTE_US = 60_000_000
_NIGHT_OWL_SHARE = 0.03  # legit purchases at any hour, so night alone proves nothing


@dataclass(frozen=True, slots=True, eq=False)
class DayBlock:
    """One simulated day of transactions as world indices, sorted by time, with the truth."""

    day: int
    customer: np.ndarray  # int32
    terminal: np.ndarray  # int32
    timestamp: np.ndarray  # int64 microseconds since the epoch, UTC
    amount: np.ndarray
    online: np.ndarray  # bool
    scenario: np.ndarray  # int8, 0 legit
    reported_at: np.ndarray  # int64 microseconds, NAT when never reported

    def __len__(self) -> int:
        return len(self.customer)


def _at_local_hour(world: World, block_start: int, hours: np.ndarray) -> np.ndarray:
    """The instant in [block_start, block_start + 1 day) showing `hours` on the local clock."""
    offset = round(world.config.utc_offset_hours * HOUR_US)
    local_start = (block_start + offset) % DAY_US
    return block_start + ((hours % 24.0) * HOUR_US - local_start).astype(np.int64) % DAY_US


def _weekday(world: World, timestamp: np.ndarray) -> np.ndarray:
    offset = round(world.config.utc_offset_hours * HOUR_US)
    return ((timestamp + offset) // DAY_US + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0


def _typical_amount(world: World, rng: np.random.Generator, customer: np.ndarray) -> np.ndarray:
    return np.exp(
        world.amount_mu[customer]
        + world.amount_sigma[customer] * rng.standard_normal(len(customer))
    )


def _cents(amount: np.ndarray) -> np.ndarray:
    return np.maximum(np.round(amount, 2), 0.05)


def _first_far(
    rng: np.random.Generator,
    origin_xy: np.ndarray,
    pool: np.ndarray,
    pool_xy: np.ndarray,
    km: float,
) -> np.ndarray:
    """Per origin, a random member of `pool` at least `km` away (else the farthest of 24 drawn)."""
    draw = rng.integers(0, len(pool), (len(origin_xy), 24))
    distance = np.hypot(*(pool_xy[draw] - origin_xy[:, None, :]).transpose(2, 0, 1))
    far = distance >= km
    column = np.where(far.any(axis=1), far.argmax(axis=1), distance.argmax(axis=1))
    return pool[draw[np.arange(len(origin_xy)), column]]


def _grouped_offsets(sizes: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Cumulative gaps restarting at each group; each group's first gap is ignored."""
    starts = np.cumsum(sizes) - sizes
    gaps = gaps.copy()
    gaps[starts] = 0
    total = np.cumsum(gaps)
    return total - np.repeat(total[starts], sizes)


def _fill_budget(rng: np.random.Generator, values: np.ndarray, budget: float) -> int:
    """How many events, taken in order, add up to `budget` on average (the last one by chance)."""
    total = np.cumsum(values)
    n = int(np.searchsorted(total, budget, side="right"))
    if n < len(values):
        left = budget - (total[n - 1] if n else 0.0)
        n += int(rng.random() * values[n] < left)
    return n


def _plan_skimmed(world: World, start: int, day: int) -> tuple[np.ndarray, ...]:
    """Scenario 2 events starting on `day`: (terminal, from, until)."""
    cfg = world.config
    rng = stream_rng(cfg.seed, STREAM_SKIMMED, day)
    budget = cfg.mix[2] * world.daily_total
    low, high = cfg.compromised_terminal_days
    mean_value = world.terminal_rate[world.shops].mean() * (low + high) / 2
    size = int(3 * budget / max(mean_value, 1e-9)) + 8
    terminal = world.shops[rng.integers(0, len(world.shops), size)]
    days = rng.integers(low, high + 1, size)
    n = _fill_budget(rng, world.terminal_rate[terminal] * days, budget)
    since = start + day * DAY_US + rng.integers(0, DAY_US, n)
    return terminal[:n], since, since + days[:n] * DAY_US


def _plan_stolen(world: World, start: int, day: int) -> tuple[np.ndarray, ...]:
    """Scenario 3 events starting on `day`: (customer, from, until)."""
    cfg = world.config
    rng = stream_rng(cfg.seed, STREAM_STOLEN, day)
    budget = cfg.mix[3] * world.daily_total
    low, high = cfg.stolen_credentials_days
    share = cfg.stolen_credentials_share
    mean_value = world.tx_per_day.mean() * share * (low + high) / 2
    size = int(3 * budget / max(mean_value, 1e-9)) + 8
    customer = rng.integers(0, cfg.n_customers, size)
    days = rng.integers(low, high + 1, size)
    n = _fill_budget(rng, world.tx_per_day[customer] * share * days, budget)
    since = start + day * DAY_US + rng.integers(0, DAY_US, n)
    return customer[:n], since, since + days[:n] * DAY_US


def _in_windows(
    key: np.ndarray, timestamp: np.ndarray, events: list[tuple[np.ndarray, ...]]
) -> np.ndarray:
    """Rows whose key (terminal or customer) has an event window covering their timestamp."""
    hit = np.zeros(len(key), dtype=bool)
    owner, since, until = (np.concatenate(part) for part in zip(*events, strict=True))
    rows = np.flatnonzero(np.isin(key, owner))
    for lo in range(0, len(rows), 4096):  # bounds the rows x events matrix
        part = rows[lo : lo + 4096]
        inside = (
            (key[part, None] == owner[None, :])
            & (timestamp[part, None] >= since[None, :])
            & (timestamp[part, None] < until[None, :])
        )
        hit[part] = inside.any(axis=1)
    return hit


@dataclass(slots=True)
class _Rows:
    customer: np.ndarray
    terminal: np.ndarray
    timestamp: np.ndarray
    amount: np.ndarray
    online: np.ndarray
    scenario: np.ndarray


def _legit(world: World, rng: np.random.Generator, block_start: int) -> _Rows:
    cfg = world.config
    factors = world.weekday_factors
    counts = rng.poisson(world.tx_per_day * factors.max())
    customer = np.repeat(np.arange(cfg.n_customers, dtype=np.int32), counts)
    m = len(customer)
    hours = np.where(
        rng.random(m) < _NIGHT_OWL_SHARE,
        rng.uniform(0.0, 24.0, m),
        world.peak_hour[customer] + world.hour_spread[customer] * rng.standard_normal(m),
    )
    timestamp = _at_local_hour(world, block_start, hours)
    # Thinning by the weekday of each instant gives the weekly rhythm exactly.
    keep = rng.random(m) * factors.max() < factors[_weekday(world, timestamp)]
    pick = rng.random(m)
    buy_online = rng.random(m) < world.online_share[customer]
    terminal = world.candidates[customer, (world.n_candidates[customer] * pick**2).astype(np.int64)]
    if len(world.online_pool):
        chosen = np.searchsorted(world.online_cdf, pick[buy_online], side="right")
        terminal[buy_online] = world.online_pool[chosen]
    amount = _typical_amount(world, rng, customer) * world.terminal_price[terminal]
    online = rng.random(m) < world.terminal_online[terminal]
    return _Rows(
        customer[keep],
        terminal[keep],
        timestamp[keep],
        _cents(amount[keep]),
        online[keep],
        np.zeros(int(keep.sum()), dtype=np.int8),
    )


def _convert(world: World, rng: np.random.Generator, rows: _Rows, day: int, start: int) -> None:
    """Scenarios that turn genuine purchases into fraud: 2 skimmed terminal, 3 stolen, 1 outlier."""
    cfg = world.config
    if cfg.mix[2] > 0:
        low = day - cfg.compromised_terminal_days[1] + 1
        events = [_plan_skimmed(world, start, d) for d in range(low, day + 1)]
        rows.scenario[_in_windows(rows.terminal, rows.timestamp, events)] = 2
    if cfg.mix[3] > 0:
        low = day - cfg.stolen_credentials_days[1] + 1
        events = [_plan_stolen(world, start, d) for d in range(low, day + 1)]
        hit = _in_windows(rows.customer, rows.timestamp, events)
        hit &= rng.random(len(hit)) < cfg.stolen_credentials_share
        hit &= rows.scenario == 0
        rows.scenario[hit] = 3
        n = int(hit.sum())
        if len(world.online_pool):
            # Stolen card details are used card-not-present, at online merchants the
            # fraudster picks, for more than the victim usually spends there.
            terminal = world.online_pool[rng.integers(0, len(world.online_pool), n)]
            rows.terminal[hit] = terminal
            rows.online[hit] = True
            typical = (
                _typical_amount(world, rng, rows.customer[hit]) * world.terminal_price[terminal]
            )
            rows.amount[hit] = _cents(typical * rng.uniform(2.0, 5.0, n))
        else:
            rows.amount[hit] = _cents(rows.amount[hit] * rng.uniform(2.0, 5.0, n))
    legit = np.flatnonzero(rows.scenario == 0)
    budget = cfg.mix[1] * len(rows.scenario) / (1.0 - cfg.mix[4:].sum())
    n = min(len(_event_sizes(rng, (1, 1), budget)), len(legit))
    chosen = rng.choice(legit, size=n, replace=False)
    rows.scenario[chosen] = 1
    rows.amount[chosen] = _cents(rng.lognormal(math.log(cfg.outlier_amount_median), 0.35, n))


def _event_sizes(rng: np.random.Generator, sizes: tuple[int, int], budget: float) -> np.ndarray:
    """Sizes of the day's events of a scenario, adding up to `budget` transactions on average."""
    drawn = rng.integers(sizes[0], sizes[1] + 1, int(budget / sizes[0]) + 2)
    return drawn[: _fill_budget(rng, drawn.astype(np.float64), budget)]


def _card_testing(world: World, rng: np.random.Generator, budget: float, start: int) -> _Rows:
    """Scenario 4: tiny probes at several merchants within minutes, then one large purchase."""
    cfg = world.config
    low, high = cfg.card_testing_probes
    sizes = _event_sizes(rng, (low + 1, high + 1), budget)
    n_events = len(sizes)
    customer = rng.integers(0, cfg.n_customers, n_events).astype(np.int32)
    total = int(sizes.sum())
    last = np.cumsum(sizes) - 1
    gaps = (rng.exponential(40.0, total) + 5.0) * 1e6
    gaps[last] = rng.uniform(1.0, 15.0, n_events) * _MINUTE_US
    since = start + rng.integers(0, DAY_US - 4 * HOUR_US, n_events)
    timestamp = np.repeat(since, sizes) + _grouped_offsets(sizes, gaps).astype(np.int64)
    pool = world.online_pool if len(world.online_pool) else world.shops
    terminal = pool[rng.integers(0, len(pool), total)].astype(np.int32)
    amount = rng.uniform(0.8, 5.0, total)
    each = np.repeat(customer, sizes)
    big = _typical_amount(world, rng, customer) * world.terminal_price[terminal[last]]
    amount[last] = big * rng.uniform(2.0, 6.0, n_events)
    online = rng.random(total) < world.terminal_online[terminal]
    return _Rows(each, terminal, timestamp, _cents(amount), online, np.full(total, 4, np.int8))


def _takeover(world: World, rng: np.random.Generator, budget: float, start: int) -> _Rows:
    """Scenario 5: a burst at shops far from home, mostly at night, larger than usual."""
    cfg = world.config
    sizes = _event_sizes(rng, cfg.takeover_transactions, budget)
    n_events = len(sizes)
    victim = rng.integers(0, cfg.n_customers, n_events).astype(np.int32)
    everyone = np.arange(cfg.n_customers)
    # The fraudster shops like someone living far away: that person's favourite shops.
    local = _first_far(rng, world.home_xy[victim], everyone, world.home_xy, cfg.far_from_home_km)
    hours = np.where(
        rng.random(n_events) < 0.7, rng.uniform(0, 5, n_events), rng.uniform(0, 24, n_events)
    )
    gaps = (rng.exponential(8.0, int(sizes.sum())) + 0.5) * _MINUTE_US
    offsets = _grouped_offsets(sizes, gaps).astype(np.int64)
    since = _at_local_hour(world, start, hours)
    overrun = np.maximum(since + offsets[np.cumsum(sizes) - 1] - (start + DAY_US - 1), 0)
    timestamp = np.repeat(since - overrun, sizes) + offsets
    each, fraudster = np.repeat(victim, sizes), np.repeat(local, sizes)
    position = (world.n_candidates[fraudster] * rng.random(len(each)) ** 2).astype(np.int64)
    terminal = world.candidates[fraudster, position]
    amount = _typical_amount(world, rng, each) * world.terminal_price[terminal]
    amount *= rng.uniform(1.5, 4.0, len(each))
    online = rng.random(len(each)) < world.terminal_online[terminal]
    return _Rows(each, terminal, timestamp, _cents(amount), online, np.full(len(each), 5, np.int8))


def _impossible_travel(
    world: World, rng: np.random.Generator, rows: _Rows, budget: float, start: int
) -> _Rows:
    """Scenario 6: a cloned card used in a shop far away minutes from a genuine purchase."""
    cfg = world.config
    genuine = np.flatnonzero((rows.scenario == 0) & ~rows.online)
    n_events = len(_event_sizes(rng, (1, 1), budget))
    reference = rng.choice(genuine, size=min(n_events, len(genuine)), replace=False)
    n = len(reference)
    present = world.shops[world.terminal_online[world.shops] < 0.5]
    origin = world.terminal_xy[rows.terminal[reference]]
    terminal = _first_far(
        rng, origin, present, world.terminal_xy[present], cfg.impossible_travel_km
    ).astype(np.int32)
    shift = (rng.uniform(2.0, 45.0, n) * _MINUTE_US).astype(np.int64)
    shift *= np.where(rng.random(n) < 0.5, -1, 1)
    timestamp = rows.timestamp[reference] + shift
    outside = (timestamp < start) | (timestamp >= start + DAY_US)
    timestamp[outside] -= 2 * shift[outside]
    customer = rows.customer[reference]
    amount = _typical_amount(world, rng, customer) * world.terminal_price[terminal]
    amount *= rng.uniform(1.0, 2.5, n)
    return _Rows(
        customer, terminal, timestamp, _cents(amount), np.zeros(n, bool), np.full(n, 6, np.int8)
    )


def generate_day(world: World, *, start: int, day: int) -> DayBlock:
    """Transactions of day `day` after `start` (microseconds since the epoch, UTC), sorted.

    Deterministic in (seed, start, day): offline and live mode make the same blocks.
    """
    cfg = world.config
    rng = stream_rng(cfg.seed, STREAM_DAY, day)
    block_start = start + day * DAY_US
    rows = _legit(world, rng, block_start)
    _convert(world, rng, rows, day, start)
    # Added scenarios are sized so their share is of all rows, added ones included.
    total = len(rows.scenario) / (1.0 - cfg.mix[4:].sum())
    parts = [
        rows,
        _card_testing(world, rng, cfg.mix[4] * total, block_start),
        _takeover(world, rng, cfg.mix[5] * total, block_start),
        _impossible_travel(world, rng, rows, cfg.mix[6] * total, block_start),
    ]
    customer, terminal, timestamp, amount, online, scenario = (
        np.concatenate([getattr(part, name) for part in parts])
        for name in ("customer", "terminal", "timestamp", "amount", "online", "scenario")
    )
    # A block never spills into the next day, so blocks concatenate in time order.
    timestamp = np.clip(timestamp, block_start, block_start + DAY_US - 1)
    order = np.lexsort((amount, terminal, customer, timestamp))  # ties broken by content
    scenario = scenario[order]
    timestamp = timestamp[order]
    fraud = np.flatnonzero(scenario > 0)
    reported_at = np.full(len(order), NAT, dtype=np.int64)
    delays = rng.lognormal(
        math.log(cfg.label_delay_median_days * DAY_US), cfg.label_delay_sigma, len(fraud)
    )
    reported = rng.random(len(fraud)) >= cfg.never_reported_share
    reported_at[fraud[reported]] = timestamp[fraud[reported]] + delays[reported].astype(np.int64)
    return DayBlock(
        day=day,
        customer=customer[order].astype(np.int32),
        terminal=terminal[order].astype(np.int32),
        timestamp=timestamp,
        amount=amount[order],
        online=online[order],
        scenario=scenario,
        reported_at=reported_at,
    )
