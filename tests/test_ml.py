"""Offline training: protocol, metrics, datasets, training into MLflow, and `fraudapp evaluate`."""

from __future__ import annotations

import argparse
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import numpy as np
import pandas as pd
import pytest

from fraudapp import generator, model
from fraudapp.errors import NotFound
from fraudapp.ml import add_cli, dataset, metrics, training
from fraudapp.ml.dataset import LabelledHistory
from fraudapp.ml.protocol import (
    Split,
    day_index,
    evaluation_mask,
    latest_split,
    make_split,
    prequential_splits,
    validation_split,
    window_mask,
)

START = datetime(2025, 3, 3, tzinfo=UTC)
DAYS = 35


def utc(*values: str) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True))


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    """A small simulated world: 35 days, 800 customers (~55,000 transactions)."""
    config = generator.SimulationConfig(seed=11, n_customers=800, n_terminals=1_600)
    return generator.simulate_history(config, start=START, days=DAYS)


@pytest.fixture(scope="module")
def history(simulated: pd.DataFrame) -> LabelledHistory:
    frame = simulated.rename(columns={"reported_at": "known_at"})
    return dataset.from_frames(frame, generator.label_events(simulated), source="test")


# --- protocol ---------------------------------------------------------------------------------


def test_split_windows_leave_a_gap_of_the_label_delay() -> None:
    split = make_split("2025-01-01T15:30", train_days=7, delay_days=5, test_days=3)
    assert split.train_start == pd.Timestamp("2025-01-01", tz="UTC")
    assert split.train_end == pd.Timestamp("2025-01-08", tz="UTC")
    assert split.gap == pd.Timedelta(days=5)
    assert split.test_start == pd.Timestamp("2025-01-13", tz="UTC")
    assert split.test_end == pd.Timestamp("2025-01-16", tz="UTC")
    ts = utc("2025-01-07 23:59", "2025-01-08 00:00", "2025-01-12 23:59", "2025-01-13 00:00")
    assert window_mask(ts, split.train_start, split.train_end).tolist() == [1, 0, 0, 0]
    assert window_mask(ts, split.test_start, split.test_end).tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="out of order"):
        Split(split.test_start, split.test_end, split.train_start, split.train_end)


def test_latest_split_ends_with_the_last_complete_day() -> None:
    split = latest_split(
        pd.Timestamp("2025-02-01 13:00", tz="UTC"), train_days=7, delay_days=7, test_days=7
    )
    assert split.test_end == pd.Timestamp("2025-02-01", tz="UTC")
    assert split.train_start == pd.Timestamp("2025-01-11", tz="UTC")


def test_cards_known_compromised_are_left_out_of_later_test_days() -> None:
    split = make_split("2025-01-01", train_days=7, delay_days=7, test_days=3)  # test 15..17
    frame = pd.DataFrame(
        {
            "timestamp": utc(
                "2025-01-05 10:00",  # a: fraud in training, known on the 14th
                "2025-01-15 09:00",  # a: test day 0 -> dropped (known before the day began)
                "2025-01-15 11:00",  # b: fraud, known on the 16th at noon
                "2025-01-16 08:00",  # b: day 1, known only later that day -> kept
                "2025-01-17 08:00",  # b: day 2 -> dropped
                "2025-01-17 09:00",  # c: never known fraud -> kept
                "2025-01-20 09:00",  # c: after the test window
            ),
            "customer_id": pd.Series(["a", "a", "b", "b", "b", "c", "c"]),
            "fraud_known_at": utc(
                "2025-01-14 00:00", None, "2025-01-16 12:00", None, None, None, None
            ),
        }
    )
    mask = evaluation_mask(frame["timestamp"], frame["customer_id"], frame["fraud_known_at"], split)
    assert mask.tolist() == [False, False, True, True, False, True, False]
    assert day_index(frame["timestamp"][mask], split.test_start).tolist() == [0, 1, 2]


def test_validation_split_lies_before_the_test_and_keeps_the_gap() -> None:
    split = make_split("2025-02-01", train_days=14, delay_days=7, test_days=7)
    valid = validation_split(split, history_start=pd.Timestamp("2025-01-01", tz="UTC"))
    assert valid.test_end == split.train_end  # hyper-parameters never see the test window
    assert valid.test_end - valid.test_start == pd.Timedelta(days=7)
    assert valid.gap == split.gap
    assert valid.train_end - valid.train_start == pd.Timedelta(days=14)
    # History starting with the training window: a shorter gap, still before the test.
    short = validation_split(split, history_start=split.train_start)
    assert split.train_start <= short.train_start < short.train_end <= short.test_start
    assert short.test_end == split.train_end
    assert short.train_end - short.train_start >= pd.Timedelta(days=7)


def test_prequential_folds_step_back_one_test_window_each() -> None:
    split = make_split("2025-02-01", train_days=7, delay_days=7, test_days=7)
    folds = prequential_splits(split, 3)
    assert [f.test_start.day for f in folds] == [15, 8, 1]
    assert all(f.gap == split.gap for f in folds)


# --- metrics ----------------------------------------------------------------------------------


def test_ranking_metrics_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8])
    assert metrics.auc_roc(y, score) == pytest.approx(0.75)
    # Ranked: 0.8 (fraud) 0.4 (legit) 0.35 (fraud): AP = (1/1 + 2/3) / 2.
    assert metrics.average_precision(y, score) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(metrics.auc_roc(np.zeros(3), np.ones(3)))


def test_operating_point_and_confusion_matrix() -> None:
    y = np.array([1, 1, 0, 0, 1])
    score = np.array([0.9, 0.4, 0.6, 0.1, 0.8])
    point = metrics.operating_point(y, score, 0.5)
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (2, 1, 1, 1)
    assert point["precision"] == pytest.approx(2 / 3)
    assert point["recall"] == pytest.approx(2 / 3)
    assert point["f1"] == pytest.approx(2 / 3)


def test_card_precision_at_k_uses_max_score_per_card_and_drops_caught_cards() -> None:
    # day 0: A max 0.9 fraud, B 0.8 legit, C 0.1 fraud -> top 2 = A, B -> 1/2, A caught.
    # day 1: A (caught, skipped), B 0.7 legit, C 0.6 fraud, D 0.2 -> top 2 = B, C -> 1/2.
    day = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    card = np.array(["A", "A", "B", "C", "A", "B", "C", "D"])
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    score = np.array([0.2, 0.9, 0.8, 0.1, 0.95, 0.7, 0.6, 0.2])
    mean, daily = metrics.card_precision_at_k(day, card, y, score, k=2)
    assert daily == [0.5, 0.5]
    assert mean == 0.5
    # Without removing caught cards day 1 would rank A first and score 1.0.
    _, daily_k1 = metrics.card_precision_at_k(day, card, y, score, k=1)
    assert daily_k1 == [1.0, 0.0]


def test_threshold_choice_and_recall_per_scenario() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.2, 0.3, 0.45, 0.5, 0.6, 0.9])
    # Flagging from 0.45 catches all 3 frauds with 1 false alarm: the best F1 (6 / 7).
    assert metrics.choose_threshold(y, score) == pytest.approx(0.45)
    assert metrics.choose_threshold(y, score, target_precision=1.0) == pytest.approx(0.9)
    scenario = np.array([0, 0, 0, 2, 1, 0, 1])
    recall = metrics.recall_by_scenario(scenario, y, score >= 0.55)
    assert recall == {1: 0.5, 2: 0.0}


# --- datasets ---------------------------------------------------------------------------------


def handbook_frame(simulated: pd.DataFrame) -> pd.DataFrame:
    """The simulated history in the Fraud Detection Handbook's column names and layout."""
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(simulated)),
            "TX_DATETIME": simulated["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S"),
            "CUSTOMER_ID": simulated["customer_id"].str.removeprefix("C"),
            "TERMINAL_ID": simulated["terminal_id"],
            "TX_AMOUNT": simulated["amount"],
            "TX_TIME_SECONDS": 0,
            "TX_FRAUD": simulated["is_fraud"].astype(int),
            "TX_FRAUD_SCENARIO": simulated["scenario"],
        }
    )


def test_file_with_handbook_names_loads_with_delayed_labels(
    simulated: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "handbook.csv"
    handbook_frame(simulated).head(2_000).to_csv(path, index=False)
    history = dataset.load_file(path, delay_days=7)
    tx = history.transactions
    assert list(tx.columns[:3]) == ["transaction_id", "timestamp", "customer_id"]
    assert str(tx["timestamp"].dtype) == "datetime64[us, UTC]"
    assert history.missing_columns == {
        "merchant_category",
        "currency",
        "channel",
        "terminal_lat",
        "terminal_lon",
    }
    fraud = tx["is_fraud"].to_numpy()
    assert fraud.any()
    delay = tx["fraud_known_at"][fraud] - tx["timestamp"][fraud]
    assert (delay == pd.Timedelta(days=7)).all()
    assert tx["fraud_known_at"][~fraud].isna().all()
    assert len(history.labels) == fraud.sum()
    assert history.known_fraud(tx["timestamp"].iloc[-1]).sum() <= fraud.sum()


def test_file_missing_a_required_column_says_which(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    pd.DataFrame({"TRANSACTION_ID": [1], "TX_DATETIME": ["2025-01-01"], "TX_AMOUNT": [1.0]}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match=r"missing column.*customer_id, terminal_id, is_fraud"):
        dataset.load_file(path)


async def test_fetch_labelled_history_takes_the_latest_label_known_at_the_cutoff(
    db: asyncpg.Connection,
) -> None:
    t0 = datetime(2025, 5, 1, 12, tzinfo=UTC)
    day = pd.Timedelta(days=1).to_pytimedelta()
    cutoff = t0 + 10 * day
    rows = [(f"tx{i}", t0 + i * day) for i in range(4)] + [("late", cutoff + day)]
    await db.executemany(
        "INSERT INTO transaction (transaction_id, occurred_at, customer_id, terminal_id, "
        "amount, currency, channel, received_at) VALUES ($1, $2, 'c1', 't1', 10, 'EUR', "
        "'online', $2)",
        rows,
    )
    labels = [
        ("tx0", True, t0 + 2 * day),  # fraud; a retraction only arrives after the cutoff
        ("tx0", False, cutoff + day),
        ("tx1", True, t0 + 3 * day),  # fraud, then cleared before the cutoff
        ("tx1", False, t0 + 4 * day),
        ("tx2", True, cutoff + day),  # confirmed only after the cutoff
    ]
    await db.executemany(
        "INSERT INTO label (transaction_id, is_fraud, source, known_at) "
        "VALUES ($1, $2, 'analyst', $3)",
        labels,
    )
    await db.execute("INSERT INTO simulation_truth VALUES ('tx0', 3)")
    frame = await dataset.fetch_labelled_history(db, since=t0, cutoff=cutoff)
    assert frame["transaction_id"].tolist() == ["tx0", "tx1", "tx2", "tx3"]
    assert frame["is_fraud"].tolist() == [True, False, False, False]
    assert frame["scenario"].tolist() == [3, 0, 0, 0]
    assert frame["known_at"].iloc[0] == pd.Timestamp(t0 + 2 * day)
    assert frame["known_at"].iloc[2:].isna().all()
    history = await dataset.load_postgres(db, since=t0, cutoff=cutoff)
    assert history.transactions["is_fraud"].sum() == 1
    assert len(history.labels) == 3  # every event known by the cutoff, for terminal risk


# --- training into MLflow ---------------------------------------------------------------------


def test_training_logs_registers_and_serves_the_champion(
    history: LabelledHistory, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    end = pd.Timestamp(START) + pd.Timedelta(days=DAYS)
    config = training.TrainConfig(
        train_days=10,
        delay_days=7,
        test_days=5,
        grid=(
            {"max_depth": 3, "learning_rate": 0.3},
            {"max_depth": 5, "learning_rate": 0.3},
        ),
        max_rounds=60,
        early_stopping_rounds=10,
        compare_base_score=True,
    )
    split = latest_split(end, train_days=10, delay_days=7, test_days=5)
    assert model.load_champion(uri) is None
    assert model.list_versions(uri) == []
    stages: list[tuple[str, float]] = []
    first = training.train(
        history, split, config, tracking_uri=uri, progress=lambda s, f: stages.append((s, f))
    )
    fitted = first.fitted
    tx = history.transactions
    in_train = window_mask(tx["timestamp"], split.train_start, split.train_end)
    assert fitted.rows["train"] == in_train.sum()
    assert (
        fitted.rows["train_frauds_known"] == history.known_fraud(split.test_start)[in_train].sum()
    )
    assert fitted.rows["train_frauds_known"] < tx["is_fraud"][in_train].sum()  # some not known yet
    assert fitted.valid_split.test_end <= split.test_start
    assert len(fitted.candidates) == 3  # two settings and the base_score=0.5 comparison
    assert fitted.base_score["fitted"] < 0.1  # estimated from the labels, not 0.5
    assert fitted.test_metrics["auc_roc"] > 0.75
    assert stages[0][0] == "features" and stages[-1] == ("done", 1.0)
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(stages))

    # First version: challenger and, as nothing held it, champion.
    versions = model.list_versions(uri)
    assert [(v["version"], v["aliases"]) for v in versions] == [("1", ["challenger", "champion"])]
    assert versions[0]["metrics"]["auc_roc"] == pytest.approx(fitted.test_metrics["auc_roc"])
    assert versions[0]["feature_names"] == list(fitted.feature_names)

    champion = model.load_champion(uri)
    assert champion is not None and champion.version == "1"
    assert champion.feature_names == fitted.feature_names
    assert champion.threshold == pytest.approx(fitted.threshold)
    rows = fitted.test_example
    np.testing.assert_allclose(
        champion.predict(rows), fitted.booster.inplace_predict(rows), rtol=1e-6
    )

    # A second version is only the challenger until promoted.
    second = training.train(
        history, split, training.quick_config(config), tracking_uri=uri, run_name="second"
    )
    assert second.version == "2"
    aliases = {v["version"]: v["aliases"] for v in model.list_versions(uri)}
    assert aliases == {"2": ["challenger"], "1": ["champion"]}
    model.promote(uri, "2")
    promoted = model.load_champion(uri)
    assert promoted is not None and promoted.version == "2"
    with pytest.raises(NotFound):
        model.promote(uri, "9")

    from fraudapp.ml import tracking

    run = tracking.client(uri).get_run(first.run_id)
    assert run.data.params["xgboost_version"]
    assert run.data.tags["feature_names"].split(",") == list(fitted.feature_names)
    artifacts = {a.path for a in tracking.client(uri).list_artifacts(first.run_id, "plots")}
    assert artifacts == {
        "plots/roc.png",
        "plots/precision_recall.png",
        "plots/feature_importance.png",
        "plots/score_by_class.png",
    }
    # Artifacts live beside the database, not in the working directory's ./mlruns.
    assert (tmp_path / "mlartifacts").is_dir()


def test_default_tracking_uri_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    from fraudapp.ml import tracking

    uri = tracking.tracking_uri(tmp_path, None)
    assert uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.artifact_location(uri) == (tmp_path / "mlartifacts").resolve().as_uri()
    assert tracking.tracking_uri(tmp_path, "http://mlflow:5000") == "http://mlflow:5000"
    assert tracking.artifact_location("http://mlflow:5000") is None


# --- fraudapp evaluate ------------------------------------------------------------------------


def test_evaluate_cli_on_a_handbook_style_csv(
    simulated: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "transactions.csv"
    handbook_frame(simulated).to_csv(path, index=False)
    out = tmp_path / "report.json"
    parser = argparse.ArgumentParser(prog="fraudapp")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "evaluate",
            "--data",
            str(path),
            "--start",
            "2025-03-21",
            "--train-days",
            "7",
            "--delay-days",
            "5",
            "--test-days",
            "2",
            "--no-search",
            "--folds",
            "2",
            "--json",
            str(out),
        ]
    )
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "left out (the data lacks their columns): is_online" in printed
    assert "card_precision_at_100" in printed and "±" in printed
    report = json.loads(out.read_text())
    assert len(report["folds"]) == 2
    assert report["folds"][0]["split"]["test_start"].startswith("2025-04-02")
    assert report["folds"][1]["split"]["test_start"].startswith("2025-03-31")
    assert "customer_km_from_home" in report["features_left_out"]
    summary = report["summary"]
    assert 0.5 < summary["auc_roc"]["mean"] <= 1.0
    assert 0.0 <= summary["card_precision_at_100"]["mean"] <= 1.0
