"""Features: known answers on hand-made histories, batch = streaming, and history beats the row.

Every hand-made case runs through both executors (`features`), so each known answer checks
the batch and the streaming definition at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from fraudapp.errors import InvalidInput
from fraudapp.features import (
    FEATURE_NAMES,
    FEATURES,
    FeatureConfig,
    FeatureState,
    available_features,
    compute_features,
    unavailable_features,
)
from fraudapp.generator import SimulationConfig, label_events, simulate_history
from fraudapp.transactions import LABEL_COLUMNS, TRANSACTION_COLUMNS, TransactionBatch

T0 = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, 00:00 UTC
PARIS = (48.8566, 2.3522)
DEFAULT = FeatureConfig()
KM_PER_DEGREE = 6371.0088 * math.pi / 180  # along a meridian, with the features' Earth radius


def at(days: float = 0, hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def history(*rows: dict[str, object]) -> pd.DataFrame:
    """Transactions from partial rows (customer C, terminal T, amount 10, Paris by default)."""
    defaults: dict[str, object] = {
        "customer_id": "C",
        "terminal_id": "T",
        "merchant_category": "5411",
        "amount": 10.0,
        "currency": "EUR",
        "channel": "card_present",
        "terminal_lat": PARIS[0],
        "terminal_lon": PARIS[1],
    }
    frame = pd.DataFrame([{**defaults, **row} for row in rows])
    frame["transaction_id"] = [f"tx{i}" for i in range(len(frame))]
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame[list(TRANSACTION_COLUMNS)]


def labels_for(frame: pd.DataFrame, *events: tuple[int, bool, datetime]) -> pd.DataFrame:
    """Label events (row of `frame`, is_fraud, known_at)."""
    rows = [
        {
            "transaction_id": frame["transaction_id"].iloc[i],
            "timestamp": frame["timestamp"].iloc[i],
            "customer_id": frame["customer_id"].iloc[i],
            "terminal_id": frame["terminal_id"].iloc[i],
            "is_fraud": fraud,
            "known_at": pd.Timestamp(known),
            "source": "analyst",
        }
        for i, fraud, known in events
    ]
    return pd.DataFrame(rows, columns=list(LABEL_COLUMNS))


def stream(
    transactions: pd.DataFrame,
    labels: pd.DataFrame | None,
    *,
    config: FeatureConfig = DEFAULT,
    sizes: Iterator[int] | None = None,
) -> np.ndarray:
    """Streaming features of a time-sorted history, fed in batches with labels interleaved.

    Interleaving, the streaming reading of "known at scoring time": before each batch, add the
    label events (in known_at order) whose known_at is at most the batch's last timestamp; the
    state applies each one just before the first transaction with timestamp >= its known_at.
    """
    state = FeatureState(config)
    batch = TransactionBatch.from_frame(transactions)
    known = pd.DatetimeIndex([] if labels is None else labels["known_at"]).as_unit("us")
    if labels is not None:
        order = np.argsort(known.asi8, kind="stable")
        labels, known = labels.iloc[order], known[order]
    stamps = pd.DatetimeIndex(transactions["timestamp"]).as_unit("us")
    rows, start, added = [], 0, 0
    while start < len(batch):
        stop = min(len(batch), start + (next(sizes) if sizes is not None else len(batch)))
        due = int(np.searchsorted(known.asi8, stamps[stop - 1].value, side="right"))
        if labels is not None and due > added:
            state.add_labels(labels.iloc[added:due])
            added = due
        rows.append(state.transform(batch.take(slice(start, stop))))
        start = stop
    return np.concatenate(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))


def features(
    transactions: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    *,
    config: FeatureConfig = DEFAULT,
) -> pd.DataFrame:
    """Batch features, after checking that streaming (one batch) gives the very same numbers."""
    batch = compute_features(transactions, labels, config=config)
    assert list(batch.columns) == list(FEATURE_NAMES)
    np.testing.assert_array_equal(stream(transactions, labels, config=config), batch.to_numpy())
    return batch


# --- definitions -----------------------------------------------------------------------------


def test_every_feature_is_documented_and_explains_itself() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == len(FEATURES)
    assert tuple(FEATURES) == FEATURE_NAMES
    for name, feature in FEATURES.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name)
        assert feature.name == name and feature.description and feature.unit
        assert feature.explain(6.2) and feature.explain(0.0)
    assert FEATURES["customer_amount_ratio_30d"].explain(6.2) == (
        "amount is 6.2× this customer's 30-day mean"
    )
    assert FEATURES["is_night"].explain(0.0) == "made in the daytime"


def test_features_needing_missing_columns_are_left_out_with_the_reason() -> None:
    columns = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]
    left_out = unavailable_features(columns)
    assert left_out == {
        "is_online": "needs column 'channel'",
        "customer_online_share_30d": "needs column 'channel'",
        "customer_km_from_home": "needs column 'terminal_lat'",
        "customer_km_from_prev": "needs column 'terminal_lat'",
        "customer_speed_kmh": "needs column 'terminal_lat'",
    }
    assert available_features(columns) == [n for n in FEATURE_NAMES if n not in left_out]
    assert available_features(TRANSACTION_COLUMNS) == list(FEATURE_NAMES)
    assert set(unavailable_features(["timestamp"])) == set(FEATURE_NAMES)

    frame = history({"timestamp": at(hours=1)}, {"timestamp": at(hours=2)})[columns]
    computed = compute_features(frame, None)
    assert list(computed.columns) == available_features(columns)
    assert computed["customer_count_1d"].tolist() == [0, 1]
    with pytest.raises(InvalidInput, match="is_online"):
        compute_features(frame, None, names=["amount", "is_online"])


# --- known answers ---------------------------------------------------------------------------


def test_first_transaction_gets_neutral_values() -> None:
    row = features(history({"timestamp": at(days=3, hours=12), "amount": 42.5})).iloc[0]
    assert row["amount"] == 42.5
    assert row["log_amount"] == pytest.approx(math.log1p(42.5))
    for name in FEATURE_NAMES:
        if name.startswith(("customer_count", "customer_mean", "terminal_")):
            if name != "terminal_amount_vs_typical_30d":
                assert row[name] == 0, name
    assert row["customer_amount_ratio_30d"] == 1
    assert row["customer_amount_vs_typical_30d"] == row["terminal_amount_vs_typical_30d"] == 1
    assert row["customer_online_share_30d"] == 0
    assert row["customer_amount_zscore_30d"] == 0
    assert row["customer_seconds_since_prev"] == 30 * 86_400
    assert row["customer_new_terminal"] == 1
    assert row["customer_km_from_home"] == row["customer_km_from_prev"] == 0
    assert row["customer_speed_kmh"] == 0


def test_burst_of_five_in_ten_minutes() -> None:
    amounts = [1.0, 2.0, 3.0, 4.0, 500.0]
    frame = history(
        *({"timestamp": at(hours=10, minutes=2 * i), "amount": a} for i, a in enumerate(amounts))
    )
    fifth = features(frame).iloc[4]
    assert fifth["customer_count_10min"] == 4
    assert fifth["customer_count_1h"] == 4
    assert fifth["customer_amount_sum_1h"] == pytest.approx(10.0)
    assert fifth["customer_seconds_since_prev"] == 120
    assert fifth["customer_count_1d"] == 4
    assert fifth["customer_amount_ratio_30d"] == pytest.approx(500 / 2.5)
    # against the geometric mean (24 ** 0.25) the four small probes make it look even larger
    assert fifth["customer_amount_vs_typical_30d"] == pytest.approx(500 / 24**0.25, rel=1e-5)


def test_amount_versus_what_the_terminal_usually_charges() -> None:
    frame = history(
        {"timestamp": at(days=1), "customer_id": "A", "amount": 10.0, "channel": "online"},
        {"timestamp": at(days=2), "customer_id": "B", "amount": 40.0},
        {"timestamp": at(days=3), "customer_id": "A", "amount": 100.0},
        # day 31: the window (that day and the 29 before) has lost the first purchase
        {"timestamp": at(days=31, hours=1), "customer_id": "B", "amount": 50.0},
        {"timestamp": at(days=4), "customer_id": "A", "amount": 20.0, "terminal_id": "U"},
    )
    f = features(frame)
    assert f["terminal_amount_vs_typical_30d"].tolist()[:3] == pytest.approx([1.0, 4.0, 5.0])
    assert f["terminal_amount_vs_typical_30d"].iloc[3] == pytest.approx(50 / 4000**0.5, rel=1e-5)
    assert f["terminal_amount_vs_typical_30d"].iloc[4] == 1.0  # a terminal never seen before
    # customer A: one online purchase of two before the one at terminal U
    assert f["customer_online_share_30d"].iloc[4] == pytest.approx(0.5)
    assert f["customer_amount_vs_typical_30d"].iloc[4] == pytest.approx(20 / 1000**0.5, rel=1e-5)


def test_short_windows_are_minute_and_ten_minute_buckets() -> None:
    frame = history(
        {"timestamp": at(hours=10, seconds=30)},  # minute 0 of 10:00
        {"timestamp": at(hours=10, minutes=9, seconds=59), "customer_id": "D"},
        {"timestamp": at(hours=10, minutes=10, seconds=59)},  # 10 min bucket = minutes 1..10
        {"timestamp": at(hours=10, minutes=59)},  # 1 h = the 10:00-10:59 ten-minute buckets
        {"timestamp": at(hours=11, minutes=0)},  # 1 h = ten-minute buckets 10:10..11:09
    )
    frame.loc[1, "customer_id"] = "C"
    computed = features(frame)
    assert computed["customer_count_10min"].tolist() == [0, 1, 1, 0, 1]
    assert computed["customer_count_1h"].tolist() == [0, 1, 2, 3, 2]


def test_customer_windows_and_amount_versus_history() -> None:
    frame = history(
        {"timestamp": at(days=0, hours=9), "amount": 10.0},  # before the 30-day window
        {"timestamp": at(days=20, hours=9), "amount": 20.0},
        {"timestamp": at(days=27, hours=9), "amount": 30.0},
        {"timestamp": at(days=29, hours=22), "amount": 40.0},
        {"timestamp": at(days=30, hours=10), "amount": 120.0},
    )
    last = features(frame).iloc[4]
    assert (last["customer_count_1d"], last["customer_mean_amount_1d"]) == (1, 40.0)
    assert (last["customer_count_7d"], last["customer_mean_amount_7d"]) == (2, 35.0)
    assert (last["customer_count_30d"], last["customer_mean_amount_30d"]) == (3, 30.0)
    assert last["customer_amount_ratio_30d"] == pytest.approx(4.0)
    std = np.std([20.0, 30.0, 40.0])
    assert last["customer_amount_zscore_30d"] == pytest.approx((120 - 30) / std)
    assert last["customer_seconds_since_prev"] == 12 * 3600


def test_a_later_transaction_in_the_same_batch_sees_the_earlier_ones() -> None:
    frame = history(*({"timestamp": at(hours=h)} for h in range(4)))
    state = FeatureState()
    first = state.transform(TransactionBatch.from_frame(frame.iloc[:3]))
    second = state.transform(TransactionBatch.from_frame(frame.iloc[3:]))
    count = FEATURE_NAMES.index("customer_count_1d")
    assert first[:, count].tolist() == [0, 1, 2]
    assert second[:, count].tolist() == [3]


def test_impossible_travel_speed_and_distance_from_home() -> None:
    far = PARIS[0] + 500 / KM_PER_DEGREE  # 500 km due north
    frame = history(
        {"timestamp": at(hours=9, minutes=50)},
        {"timestamp": at(hours=10), "terminal_id": "U"},
        {"timestamp": at(hours=10, minutes=10), "terminal_id": "V", "terminal_lat": far},
    )
    last = features(frame).iloc[2]
    assert last["customer_km_from_prev"] == pytest.approx(500, abs=1e-3)
    assert last["customer_speed_kmh"] == pytest.approx(3000, abs=0.01)
    assert last["customer_km_from_home"] == pytest.approx(500, abs=1e-3)

    capped = features(history({"timestamp": at()}, {"timestamp": at(), "terminal_lat": far}))
    # Same instant: the time floor (60 s) gives 30,000 km/h, then the 10,000 km/h cap.
    assert capped["customer_speed_kmh"].iloc[1] == 10_000


def test_unknown_locations_are_neutral_and_do_not_move_home() -> None:
    frame = history(
        {"timestamp": at(hours=1), "terminal_lat": 40.0},
        {"timestamp": at(hours=2), "terminal_lat": np.nan, "terminal_lon": np.nan},
        {"timestamp": at(hours=3), "terminal_lat": 42.0},
        {"timestamp": at(hours=4), "terminal_lat": np.nan, "terminal_lon": np.nan},
    )
    computed = features(frame)
    home = 41.0  # the mean of the located ones only
    assert computed["customer_km_from_home"].iloc[2] == pytest.approx((42.0 - 40.0) * KM_PER_DEGREE)
    assert computed["customer_km_from_prev"].iloc[2] == 0  # the previous one is unlocated
    assert computed["customer_km_from_home"].iloc[3] == 0
    assert computed["customer_speed_kmh"].tolist() == [0, 0, 0, 0]
    snapshot = FeatureState.from_history(frame, None).customer_snapshot("C", at(hours=5))
    assert snapshot is not None and snapshot["home_lat"] == pytest.approx(home)


def test_night_weekend_and_online_flags() -> None:
    frame = history(
        {"timestamp": at(days=5, hours=23, minutes=30)},  # Saturday night
        {"timestamp": at(days=7, hours=5, minutes=59)},  # Monday, before 06:00
        {"timestamp": at(days=7, hours=6), "channel": "online"},
        {"timestamp": at(days=7, hours=21, minutes=59)},
        {"timestamp": at(days=7, hours=22)},
    )
    computed = features(frame)
    assert computed["is_night"].tolist() == [1, 1, 0, 0, 1]
    assert computed["is_weekend"].tolist() == [1, 0, 0, 0, 0]
    assert computed["is_online"].tolist() == [0, 0, 1, 0, 0]


def test_new_terminal_within_the_thirty_day_horizon() -> None:
    frame = history(
        {"timestamp": at(days=0), "terminal_id": "T1"},
        {"timestamp": at(days=1), "terminal_id": "T1"},
        {"timestamp": at(days=1, hours=1), "terminal_id": "T2"},
        {"timestamp": at(days=31), "terminal_id": "T1"},  # last seen day 1: days 2..31 only
        {"timestamp": at(days=32), "terminal_id": "T1"},
        {"timestamp": at(days=32, hours=1), "terminal_id": "T1", "customer_id": "D"},
    )
    assert features(frame)["customer_new_terminal"].tolist() == [1, 0, 1, 1, 0, 1]


def test_distinct_terminals_in_the_last_hour() -> None:
    terminals = ["T1", "T2", "T1", "T3", "T4"]
    frame = history(
        *(
            {"timestamp": at(hours=8, minutes=5 * i), "terminal_id": t}
            for i, t in enumerate(terminals)
        )
    )
    assert features(frame)["customer_terminals_1h"].tolist() == [0, 1, 2, 2, 3]
    # Bounded: only the last 16 earlier transactions are looked at.
    many = history(
        *({"timestamp": at(hours=8, minutes=i), "terminal_id": f"T{i}"} for i in range(20))
    )
    assert features(many)["customer_terminals_1h"].iloc[-1] == 16
    assert features(many)["customer_count_1h"].iloc[-1] == 19


def test_terminal_risk_counts_only_labels_known_at_scoring_time() -> None:
    day0 = [{"timestamp": at(days=0, hours=h), "customer_id": f"V{h}"} for h in range(1, 5)]
    frame = history(
        *day0,
        {"timestamp": at(days=8, hours=10)},  # delay 7: 1-day window = day 0
        {"timestamp": at(days=9, hours=11)},  # 1-day window = day 1; 7-day = days -5..1
        {"timestamp": at(days=9, hours=13)},
        {"timestamp": at(days=9, hours=13), "terminal_id": "other"},
    )
    labels = labels_for(
        frame,
        (0, True, at(days=3)),
        (1, True, at(days=9, hours=13)),  # known at the very time of the third: it counts
        (2, False, at(days=2)),  # a legitimate verdict changes nothing
    )
    computed = features(frame, labels)
    assert computed["terminal_count_1d"].tolist() == [0, 0, 0, 0, 4, 0, 0, 0]
    assert computed["terminal_risk_1d"].tolist() == [0, 0, 0, 0, 0.25, 0, 0, 0]
    assert computed["terminal_count_7d"].tolist()[4:] == [4, 4, 4, 0]
    assert computed["terminal_risk_7d"].tolist()[4:] == [0.25, 0.25, 0.5, 0]
    assert computed["terminal_risk_30d"].tolist()[4:] == [0.25, 0.25, 0.5, 0]
    assert computed["terminal_known_frauds_30d"].tolist() == [0, 0, 0, 0, 1, 1, 2, 0]
    assert compute_features(frame, None)["terminal_risk_30d"].max() == 0


def test_known_frauds_count_without_delay_for_thirty_days() -> None:
    frame = history(
        {"timestamp": at(days=0, hours=9)},
        {"timestamp": at(days=1), "customer_id": "D"},  # before the chargeback is known
        {"timestamp": at(days=2, hours=12), "customer_id": "D"},
        {"timestamp": at(days=29, hours=23), "customer_id": "D"},  # day 0 is the 30th day
        {"timestamp": at(days=30), "customer_id": "D"},
    )
    labels = labels_for(frame, (0, True, at(days=2)))
    computed = features(frame, labels)
    assert computed["terminal_known_frauds_30d"].tolist() == [0, 0, 1, 1, 0]


def test_a_withdrawn_fraud_label_stops_counting() -> None:
    config = FeatureConfig(label_delay_days=1)
    frame = history(
        {"timestamp": at(days=0, hours=1)},
        {"timestamp": at(days=0, hours=2)},
        {"timestamp": at(days=2, hours=0)},  # delay 1: windows end with day 0
        {"timestamp": at(days=2, hours=12)},
        {"timestamp": at(days=2, hours=20)},
    )
    labels = labels_for(
        frame,
        (0, True, at(days=1, hours=6)),
        (0, False, at(days=2, hours=6)),  # the analyst withdraws it: the latest label wins
        (0, True, at(days=2, hours=18)),  # and confirms it again
    )
    computed = features(frame, labels, config=config)
    assert computed["terminal_risk_1d"].tolist()[2:] == [0.5, 0.0, 0.5]


def test_label_delay_places_the_terminal_windows() -> None:
    frame = history({"timestamp": at(days=0)}, {"timestamp": at(days=3)})
    assert features(frame, config=FeatureConfig(label_delay_days=2))[
        "terminal_count_1d"
    ].tolist() == [0, 1]
    assert features(frame, config=FeatureConfig(label_delay_days=0))[
        "terminal_count_1d"
    ].tolist() == [0, 0]
    assert FeatureConfig(label_delay_days=7).history_days == 38
    with pytest.raises(ValueError, match="label_delay_days"):
        FeatureConfig(label_delay_days=-1)


def test_empty_inputs_and_labels_never_known() -> None:
    empty = history({"timestamp": at()}).iloc[:0]
    assert compute_features(empty, None).shape == (0, len(FEATURE_NAMES))
    assert FeatureState().transform(TransactionBatch.from_frame(empty)).shape == (0, len(FEATURES))
    frame = history({"timestamp": at(days=0)}, {"timestamp": at(days=9)})
    labels = labels_for(frame, (0, True, at(days=1)))
    labels["known_at"] = pd.NaT
    assert features(frame, labels)["terminal_risk_1d"].tolist() == [0, 0]


def test_customer_snapshot_reads_the_current_windows() -> None:
    frame = history(
        {"timestamp": at(days=1, hours=9), "amount": 20.0},
        {"timestamp": at(days=2, hours=9, minutes=30), "amount": 40.0, "terminal_id": "U"},
    )
    state = FeatureState.from_history(frame, None)
    snapshot = state.customer_snapshot("C", at(days=2, hours=10))
    assert snapshot is not None
    assert snapshot["customer_count_1h"] == 1
    assert snapshot["customer_terminals_1h"] == 1
    assert snapshot["customer_count_1d"] == 1
    assert snapshot["customer_count_30d"] == 2
    assert snapshot["customer_mean_amount_30d"] == 30.0
    assert snapshot["customer_seconds_since_prev"] == 1800
    assert snapshot["home_lat"] == pytest.approx(PARIS[0])
    assert state.customer_snapshot("nobody", at(days=2)) is None
    assert state.customers == 1 and state.terminals == 2


def test_an_out_of_order_transaction_does_not_corrupt_the_state() -> None:
    frame = history(
        {"timestamp": at(days=40, hours=10)},
        {"timestamp": at(days=2, hours=10)},  # late: older than every ring holds
        {"timestamp": at(days=40, hours=9)},  # late by an hour
        {"timestamp": at(days=40, hours=11)},
    )
    state = FeatureState()
    out = pd.DataFrame(state.transform(TransactionBatch.from_frame(frame)), columns=FEATURE_NAMES)
    assert np.isfinite(out.to_numpy()).all()
    assert out["customer_seconds_since_prev"].tolist() == [30 * 86_400, 0, 0, 3600]
    assert out["customer_count_1d"].tolist() == [0, 0, 0, 2]


# --- batch = streaming -----------------------------------------------------------------------


def random_history(seed: int, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A rough world full of edge cases: bursts, equal timestamps, unknown places, idle
    customers coming back after 30+ days, and labels that are withdrawn or come late."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.uniform(0, 75 * 86_400, n))
    burst = rng.random(n) < 0.1  # a tenth repeat the previous one's customer within seconds
    customers = rng.integers(0, 400, n)
    customers[1:][burst[1:]] = customers[:-1][burst[1:]]
    seconds[1:][burst[1:]] = seconds[:-1][burst[1:]] + rng.integers(0, 90, burst[1:].sum())
    seconds = np.sort(np.round(seconds))  # whole seconds: many ties and bucket edges
    frame = pd.DataFrame(
        {
            "transaction_id": [f"R{i:06d}" for i in range(n)],
            "timestamp": pd.Timestamp("2024-03-01", tz="UTC") + pd.to_timedelta(seconds, "s"),
            "customer_id": [f"C{c}" for c in customers],
            "terminal_id": [f"T{t}" for t in rng.integers(0, 150, n)],
            "merchant_category": "5999",
            "amount": np.round(rng.lognormal(3, 1.2, n), 2),
            "currency": "EUR",
            "channel": rng.choice(["card_present", "online"], n),
            "terminal_lat": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(42, 51, n)),
            "terminal_lon": rng.uniform(-4, 8, n),
        }
    )
    frame.loc[frame["customer_id"] == "C7", "timestamp"] = frame["timestamp"].iloc[0]
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    fraud = np.flatnonzero(rng.random(n) < 0.06)
    delay = pd.to_timedelta(rng.uniform(0, 25 * 86_400, len(fraud)), "s")
    events = [(i, True, frame["timestamp"].iloc[i] + d) for i, d in zip(fraud, delay, strict=True)]
    for i, _, known in events[::7]:  # withdrawn, some of them confirmed again
        events.append((i, False, known + pd.Timedelta(days=2)))
        if i % 2:
            events.append((i, True, known + pd.Timedelta(days=5)))
    for i in rng.integers(0, n, 200):  # verdicts of legitimate transactions
        events.append((int(i), False, frame["timestamp"].iloc[i] + pd.Timedelta(days=1)))
    labels = labels_for(frame, *events).sort_values("known_at", kind="stable")
    return frame, labels


def batch_sizes(seed: int) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.choice([1, 2, 7, 64, 500, 2048, 3000]))


def assert_same(batch: pd.DataFrame, streamed: np.ndarray) -> None:
    diff = np.abs(batch.to_numpy() - streamed)
    worst = {name: float(diff[:, i].max()) for i, name in enumerate(batch.columns)}
    print(
        f"parity on {len(batch):,} transactions x {len(worst)} features: "
        f"max |batch - streaming| = {max(worst.values())}"
    )
    assert max(worst.values()) <= 1e-9, {k: v for k, v in worst.items() if v > 1e-9}
    np.testing.assert_array_equal(batch.to_numpy(), streamed)  # in fact bit for bit


def test_parity_on_edge_cases() -> None:
    frame, labels = random_history(seed=5, n=25_000)
    assert labels["is_fraud"].sum() > 1000
    for config in (FeatureConfig(), FeatureConfig(label_delay_days=2)):
        batch = compute_features(frame, labels, config=config)
        assert_same(batch, stream(frame, labels, config=config, sizes=batch_sizes(1)))
    assert batch["terminal_risk_7d"].max() > 0
    assert batch["customer_terminals_1h"].max() >= 3


@pytest.fixture(scope="module")
def simulated() -> tuple[pd.DataFrame, pd.DataFrame]:
    config = SimulationConfig(seed=21, n_customers=600, n_terminals=800, fraud_rate=0.02)
    frame = simulate_history(config, start=datetime(2024, 5, 1), days=60)
    return frame, label_events(frame)


def test_parity_on_simulated_history(simulated: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    frame, labels = simulated
    assert len(frame) >= 20_000 and len(labels) > 100
    batch = compute_features(frame, labels)
    assert_same(batch, stream(frame, labels, sizes=batch_sizes(2)))
    assert (batch["terminal_risk_30d"] > 0).mean() > 0.01


def test_state_rebuilt_from_recent_history_is_exact(
    simulated: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, labels = simulated
    config = FeatureConfig()
    cut = frame["timestamp"].iloc[0] + pd.Timedelta(days=50)
    since = cut - pd.Timedelta(days=config.history_days)
    past, future = frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut]
    known = labels["known_at"] < cut

    full = FeatureState(config)
    full.add_labels(labels[known])
    full.update(TransactionBatch.from_frame(past))
    rebuilt = FeatureState.from_history(
        past[past["timestamp"] >= since], labels[known], config=config, chunk_size=5_000
    )
    assert (past["timestamp"] < since).sum() > 10_000  # the replay really leaves history out
    for state in (full, rebuilt):
        state.add_labels(labels[~known])
    later = TransactionBatch.from_frame(future)
    np.testing.assert_array_equal(full.transform(later), rebuilt.transform(later))
    assert rebuilt.memory_bytes() > 0


# --- history matters -------------------------------------------------------------------------


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, score))


def fit_and_score(train: np.ndarray, y: np.ndarray, test: np.ndarray) -> np.ndarray:
    import xgboost as xgb

    model = xgb.XGBClassifier(
        n_estimators=100, max_depth=5, learning_rate=0.1, n_jobs=1, tree_method="hist"
    )
    model.fit(train, y)
    return model.predict_proba(test)[:, 1]


def test_history_features_beat_the_raw_row(
    simulated: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    frame, labels = simulated
    day = (frame["timestamp"] - frame["timestamp"].iloc[0]).dt.days.to_numpy()
    train, test = (day >= 7) & (day < 38), day >= 45  # a week of gap for the label delay
    y = frame["is_fraud"].to_numpy(dtype=np.int64)
    raw_columns: Sequence[str] = ("amount", "log_amount", "is_night", "is_weekend", "is_online")
    computed = compute_features(frame, labels)
    raw = np.column_stack(
        [
            computed[list(raw_columns)].to_numpy(),
            frame["timestamp"].dt.hour.to_numpy(),
            frame["merchant_category"].astype("category").cat.codes.to_numpy(),
        ]
    )
    full = computed.to_numpy()
    raw_auc = auc(y[test], fit_and_score(raw[train], y[train], raw[test]))
    history_auc = auc(y[test], fit_and_score(full[train], y[train], full[test]))
    print(f"AUC on days 45-60: raw row {raw_auc:.3f}, with history features {history_auc:.3f}")
    assert history_auc >= raw_auc + 0.05
