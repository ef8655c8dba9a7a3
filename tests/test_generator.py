import argparse
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fraudapp import generator
from fraudapp.generator import (
    TRUTH_COLUMNS,
    LiveSimulator,
    SimulationConfig,
    build_world,
    label_events,
    simulate_history,
)
from fraudapp.simulation.traffic import generate_day
from fraudapp.transactions import LABEL_COLUMNS, TRANSACTION_COLUMNS, TransactionBatch

START = datetime(2025, 1, 6, tzinfo=UTC)  # a Monday
# Fraud rate raised and multi-day events shortened so 30 days hold enough of every scenario.
RATES = SimulationConfig(
    seed=11,
    n_customers=1_500,
    n_terminals=3_000,
    fraud_rate=0.03,
    compromised_terminal_days=(2, 5),
    stolen_credentials_days=(2, 5),
)
SMALL = SimulationConfig(seed=3, n_customers=300, n_terminals=600, fraud_rate=0.05)


@pytest.fixture(scope="module")
def world() -> generator.World:
    return build_world(RATES)


@pytest.fixture(scope="module")
def history(world: generator.World) -> pd.DataFrame:
    return simulate_history(RATES, start=START, days=30, world=world)


def indices(ids: pd.Series) -> np.ndarray:
    return ids.str[1:].astype(int).to_numpy()


def test_same_seed_same_history_other_seed_another() -> None:
    first = simulate_history(SMALL, start=START, days=3)
    pd.testing.assert_frame_equal(first, simulate_history(SMALL, start=START, days=3))
    other = simulate_history(
        SimulationConfig(seed=4, n_customers=300, n_terminals=600), start=START, days=3
    )
    assert len(other) != len(first) or not np.array_equal(other["amount"], first["amount"])


def test_any_day_block_alone_equals_its_slice_of_history(world: generator.World) -> None:
    start_us = (START - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    history = simulate_history(RATES, start=START, days=6, world=world)
    day5 = history[history["transaction_id"].str.startswith("S00005-")]
    block = generate_day(world, start=start_us, day=5)
    assert np.array_equal(
        block.timestamp, day5["timestamp"].dt.tz_localize(None).to_numpy().view(np.int64)
    )
    assert np.array_equal(block.amount, day5["amount"].to_numpy())
    assert np.array_equal(block.scenario, day5["scenario"].to_numpy())


def test_history_columns_ids_order_and_amounts(history: pd.DataFrame) -> None:
    assert tuple(history.columns) == TRANSACTION_COLUMNS + TRUTH_COLUMNS
    assert str(history["timestamp"].dtype) == "datetime64[us, UTC]"
    assert str(history["reported_at"].dtype) == "datetime64[us, UTC]"
    assert history["scenario"].dtype == np.int8 and history["is_fraud"].dtype == bool
    assert (history["is_fraud"] == (history["scenario"] > 0)).all()
    assert history["timestamp"].is_monotonic_increasing
    assert history["timestamp"].min() >= START
    assert history["timestamp"].max() < START + timedelta(days=30)
    assert history["transaction_id"].is_unique
    assert history["transaction_id"].str.fullmatch(r"S\d{5}-\d{8}").all()
    assert history["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert history["terminal_id"].str.fullmatch(r"T\d{5}").all()
    assert history["merchant_category"].str.fullmatch(r"\d{4}").all()
    assert (history["amount"] > 0).all()
    assert (history["amount"] == history["amount"].round(2)).all()
    assert set(history["channel"]) == {"card_present", "online"}
    assert history[["terminal_lat", "terminal_lon"]].notna().all().all()
    assert 43 < history["terminal_lat"].min() and history["terminal_lat"].max() < 50.5
    assert 10 < history["amount"].median() < 60


def test_each_scenario_at_its_configured_rate(history: pd.DataFrame) -> None:
    counts = np.bincount(history["scenario"], minlength=7)
    expected = RATES.mix * len(history)
    for scenario in range(1, 7):
        assert counts[scenario] == pytest.approx(expected[scenario], rel=0.2), scenario
    assert history["is_fraud"].mean() == pytest.approx(RATES.fraud_rate, rel=0.1)


def test_scenario_mix_is_configurable() -> None:
    config = SimulationConfig(
        seed=5, n_customers=300, n_terminals=600, fraud_rate=0.02, scenario_mix=(0, 0, 0, 1, 0, 1)
    )
    history = simulate_history(config, start=START, days=10)
    assert set(np.unique(history["scenario"])) == {0, 4, 6}
    assert history["is_fraud"].mean() == pytest.approx(0.02, rel=0.25)


def test_daily_and_weekly_rhythm(history: pd.DataFrame) -> None:
    local = history["timestamp"].dt.tz_convert("Europe/Paris")
    hour, weekday = local.dt.hour, local.dt.day_of_week
    assert hour.between(10, 17).sum() > 5 * hour.between(0, 5).sum()
    assert (weekday == 5).sum() > 1.3 * (weekday == 6).sum()  # Saturday busier than Sunday


def test_customers_mostly_shop_near_home(history: pd.DataFrame, world: generator.World) -> None:
    legit = history[history["scenario"] == 0]
    customer, terminal = indices(legit["customer_id"]), indices(legit["terminal_id"])
    shop = np.isin(terminal, world.shops)
    km = np.hypot(*(world.terminal_xy[terminal] - world.home_xy[customer]).T)
    assert shop.mean() > 0.85
    assert np.mean(km[shop] <= 30) > 0.9


def test_fraud_rows_look_like_legit_rows_except_outliers(history: pd.DataFrame) -> None:
    legit = history[history["scenario"] == 0]
    low, high = legit["amount"].quantile([0.005, 0.995])
    seen = {
        column: set(legit[column].unique())
        for column in ("merchant_category", "currency", "channel")
    }
    for scenario in range(2, 7):
        rows = history[history["scenario"] == scenario]
        for column, values in seen.items():
            assert set(rows[column].unique()) <= values, (scenario, column)
        assert rows["amount"].between(low, high).mean() > 0.8, scenario
    assert history.loc[history["scenario"] == 1, "amount"].median() > high


def test_scenario_signatures_need_history(history: pd.DataFrame, world: generator.World) -> None:
    cfg = RATES
    by_card = history.sort_values(["customer_id", "timestamp"], kind="stable")
    same_card = by_card["customer_id"].eq(by_card["customer_id"].shift())
    gap = (by_card["timestamp"] - by_card["timestamp"].shift()).dt.total_seconds()
    km = np.hypot(
        (by_card["terminal_lat"] - by_card["terminal_lat"].shift()) * 110.574,
        (by_card["terminal_lon"] - by_card["terminal_lon"].shift()) * 76.6,
    )
    # 6: next to a purchase of the same card, too far to travel in the time between.
    travel = same_card & (gap < 46 * 60) & (km >= cfg.impossible_travel_km * 0.95)
    impossible = by_card["scenario"] == 6
    assert (travel | travel.shift(-1, fill_value=False))[impossible].mean() > 0.95
    # 4: every probe comes within minutes of another transaction of the card.
    testing = by_card["scenario"] == 4
    assert (same_card & (gap < 20 * 60))[testing].mean() > 0.75
    # 5: far from the victim's home.
    takeover = history[history["scenario"] == 5]
    home = world.home_xy[indices(takeover["customer_id"])]
    far = np.hypot(*(world.terminal_xy[indices(takeover["terminal_id"])] - home).T)
    assert np.mean(far >= cfg.far_from_home_km) > 0.95
    # 2: while a terminal is skimmed, every one of its transactions is fraud.
    skimmed = history[
        history["terminal_id"].isin(history.loc[history["scenario"] == 2, "terminal_id"])
    ]
    span = skimmed[skimmed["scenario"] == 2].groupby("terminal_id")["timestamp"].agg(["min", "max"])
    inside = skimmed.join(span, on="terminal_id")
    inside = inside[inside["timestamp"].between(inside["min"], inside["max"])]
    assert (inside["scenario"] == 2).mean() > 0.9  # a terminal may be skimmed twice, with a gap
    # 3: inflated amounts, on the victim's usual terminals.
    stolen = history[history["scenario"] == 3]
    usual = history[history["scenario"] == 0].groupby("customer_id")["amount"].median()
    assert (stolen["amount"].to_numpy() / usual[stolen["customer_id"]].to_numpy()).mean() > 2


def test_labels_arrive_late_and_some_never(history: pd.DataFrame) -> None:
    labels = label_events(history)
    assert tuple(labels.columns) == LABEL_COLUMNS
    assert labels["known_at"].is_monotonic_increasing
    assert (labels["known_at"] > labels["timestamp"]).all()
    assert labels["is_fraud"].all() and (labels["source"] == "chargeback").all()
    frauds = history[history["is_fraud"]]
    assert set(labels["transaction_id"]) <= set(frauds["transaction_id"])
    assert history.loc[~history["is_fraud"], "reported_at"].isna().all()
    never = frauds["reported_at"].isna().mean()
    assert never == pytest.approx(RATES.never_reported_share, abs=0.03)
    delay_days = (labels["known_at"] - labels["timestamp"]).dt.total_seconds() / 86_400
    assert delay_days.median() == pytest.approx(RATES.label_delay_median_days, rel=0.15)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="scenario_mix"):
        SimulationConfig(scenario_mix=(1, 2, 3))
    with pytest.raises(ValueError, match="fraud_rate"):
        SimulationConfig(fraud_rate=0.9)


def test_cli_writes_history_and_prints_summary(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    generator.add_cli(parser.add_subparsers())
    out = tmp_path / "history.parquet"
    args = parser.parse_args(
        ["simulate", "--days", "2", "--customers", "200", "--terminals", "400", "--out", str(out)]
    )
    assert args.handler(args) == 0
    written = pd.read_parquet(out)
    assert tuple(written.columns) == TRANSACTION_COLUMNS + TRUTH_COLUMNS
    printed = capsys.readouterr().out
    assert f"transactions: {len(written):,}" in printed and "tx/min" in printed
    bad = parser.parse_args(["simulate", "--out", str(tmp_path / "history.txt")])
    assert args.handler(bad) == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


def live(clock: Callable[[], float], **kwargs: float) -> LiveSimulator:
    return LiveSimulator(
        SMALL, start=START, run_prefix=SMALL.id_prefix, tick_seconds=0.001, clock=clock, **kwargs
    )


async def ignore(frame: pd.DataFrame) -> None:
    return None


def offline(days: int) -> pd.DataFrame:
    return simulate_history(SMALL, start=START, days=days)


def same_rows(batches: list[TransactionBatch], history: pd.DataFrame) -> None:
    emitted = TransactionBatch.concat(batches).to_frame().iloc[: len(history)]
    expected = history.iloc[: len(emitted)][list(TRANSACTION_COLUMNS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(emitted, expected, check_dtype=False)


async def test_live_emits_the_offline_transactions_and_their_labels() -> None:
    history = offline(days=12)
    queue: asyncio.Queue[TransactionBatch] = asyncio.Queue()
    batches: list[TransactionBatch] = []
    labels: list[pd.DataFrame] = []
    truths: list[pd.DataFrame] = []
    emitted_ids: set[str] = set()

    async def on_labels(frame: pd.DataFrame) -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            batches.append(batch)
            emitted_ids.update(batch.transaction_id)
        assert set(frame["transaction_id"]) <= emitted_ids  # never before its transaction
        labels.append(frame)

    async def on_truth(frame: pd.DataFrame) -> None:
        truths.append(frame)

    simulator = live(asyncio.get_running_loop().time, acceleration=10_000_000.0)
    task = asyncio.create_task(simulator.run(queue, on_labels, on_truth))
    await wait_until(lambda: task.done() or simulator.emitted_transactions >= len(history))
    simulator.stop()
    await task
    while not queue.empty():
        batches.append(queue.get_nowait())
    same_rows(batches, history)
    assert sum(map(len, batches)) == simulator.emitted_transactions
    got = pd.concat(labels, ignore_index=True)
    assert len(got) == simulator.emitted_labels > 0
    want = label_events(history)
    want = want[want["known_at"] <= got["known_at"].max()]
    assert list(got["transaction_id"]) == list(want["transaction_id"])
    assert (got["known_at"].to_numpy() == want["known_at"].to_numpy()).all()
    truth = pd.concat(truths, ignore_index=True).iloc[: int(history["is_fraud"].sum())]
    frauds = history[history["is_fraud"]]
    assert list(truth["transaction_id"]) == list(frauds["transaction_id"])
    assert list(truth["scenario"]) == list(frauds["scenario"])


async def test_full_queue_makes_the_producer_wait_and_loses_nothing() -> None:
    clock = FakeClock()
    history = offline(days=1)
    simulator = live(clock, acceleration=86_400.0, max_chunk=50)
    queue: asyncio.Queue[TransactionBatch] = asyncio.Queue(maxsize=2)
    task = asyncio.create_task(simulator.run(queue, ignore))
    await wait_until(lambda: simulator.generated_days == 1)
    clock.now += 1.0  # one simulated day falls due at once
    await wait_until(lambda: simulator.emitted_transactions == 100 and queue.full())
    frozen = simulator.sim_time
    clock.now += 5.0
    await asyncio.sleep(0.01)
    assert simulator.emitted_transactions == 100  # waiting on the full queue
    assert simulator.sim_time == frozen  # and the simulated clock waits with it
    batches: list[TransactionBatch] = []
    while sum(map(len, batches)) < len(history):
        batches.append(await asyncio.wait_for(queue.get(), 5))
    # The five seconds spent blocked did not count: the clock is still at the end of day one.
    assert simulator.sim_time == START + timedelta(days=1)
    simulator.stop()
    if queue.full():
        queue.get_nowait()  # let a put waiting on the full queue through
    await asyncio.wait_for(task, 5)
    assert [len(b) for b in batches[:-1]] == [50] * (len(batches) - 1)
    same_rows(batches, history)


async def test_rate_change_takes_effect() -> None:
    clock = FakeClock()
    simulator = live(clock, rate=10.0)
    assert simulator.rate == pytest.approx(10.0)
    assert simulator.acceleration == pytest.approx(10.0 / simulator.natural_rate)
    history = offline(days=3)
    queue: asyncio.Queue[TransactionBatch] = asyncio.Queue()
    task = asyncio.create_task(simulator.run(queue, ignore))
    await wait_until(lambda: simulator.generated_days == 1)

    def due() -> int:
        return int((history["timestamp"] <= simulator.sim_time).sum())

    seconds = 0.3 * 86_400 / simulator.acceleration  # 0.3 simulated days at this rate
    clock.now += seconds
    slow = simulator.sim_time - START
    assert slow.total_seconds() == pytest.approx(0.3 * 86_400, rel=1e-6)
    await wait_until(lambda: simulator.emitted_transactions == due() > 0)
    emitted, before = simulator.emitted_transactions, simulator.sim_time
    simulator.rate = 30.0
    assert simulator.sim_time == before  # the clock changes speed, it does not jump
    clock.now += seconds
    assert (simulator.sim_time - before) / slow == pytest.approx(3.0, rel=1e-6)
    await wait_until(lambda: simulator.emitted_transactions == due() > 2 * emitted)
    simulator.pause()
    paused_at, emitted = simulator.sim_time, simulator.emitted_transactions
    clock.now += 600.0
    await asyncio.sleep(0.01)
    assert simulator.paused and simulator.sim_time == paused_at
    assert simulator.emitted_transactions == emitted
    simulator.resume()
    clock.now += 1.0
    assert simulator.sim_time > paused_at
    simulator.stop()
    await task
