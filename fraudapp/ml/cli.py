"""`fraudapp train` and `fraudapp evaluate`: the offline training stage from the command line.

`train` loads history (simulator, a file or the app's PostgreSQL), runs the protocol and
registers the model in MLflow; `evaluate` runs the same protocol on any file in the documented
schema (or simulated history) and prints the metrics, without MLflow. Heavy imports happen
inside the handlers so that `fraudapp --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fraudapp.ml.dataset import LabelledHistory
    from fraudapp.ml.protocol import Split
    from fraudapp.ml.training import TrainConfig
    from fraudapp.settings import Settings

DEFAULT_SIM_DAYS = 60


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a model through the time-ordered protocol and register it in MLflow",
        description="Train XGBoost on labelled history (train window, a gap for the label "
        "delay, test window), log the run to MLflow and register the model as 'challenger' "
        "(and 'champion' when there is none).",
    )
    train.add_argument(
        "--source",
        choices=("simulator", "postgres", "file"),
        help="where the history comes from (default: file with --data, else simulator)",
    )
    _add_data_arguments(train)
    train.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: FRAUDAPP_MLFLOW_TRACKING_URI, else "
        "sqlite:///<data dir>/mlflow.db)",
    )
    train.add_argument("--run-name", help="name of the MLflow run")
    train.set_defaults(handler=run_train)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="measure the protocol's test metrics on a file (or simulated history)",
        description="Features, hyper-parameter search on a validation split, fit on the "
        "training window, test after the label-delay gap; prints AUC ROC, average precision, "
        "card precision@100 and the operating point. Files: CSV, Parquet or pickled frames "
        "with transaction_id, timestamp, customer_id, terminal_id, amount, is_fraud (any "
        "case; handbook names TX_DATETIME, TX_AMOUNT, TX_FRAUD ... accepted).",
    )
    _add_data_arguments(evaluate)
    evaluate.add_argument(
        "--folds",
        type=int,
        default=1,
        help="prequential folds: repeat the split this many times, each a test window earlier",
    )
    evaluate.add_argument("--json", type=Path, help="also write the report as JSON here")
    evaluate.set_defaults(handler=run_evaluate)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="CSV / Parquet file (or folder) of history")
    parser.add_argument(
        "--days",
        type=int,
        default=DEFAULT_SIM_DAYS,
        help=f"simulator: days of history; postgres: days back from now (default "
        f"{DEFAULT_SIM_DAYS})",
    )
    parser.add_argument("--customers", type=int, help="simulator: number of customers")
    parser.add_argument("--seed", type=int, help="simulator: seed of the world")
    parser.add_argument(
        "--start",
        help="first day of the training window, YYYY-MM-DD (default: the split ending with the "
        "last complete day of history)",
    )
    parser.add_argument("--train-days", type=float, default=21.0, help="training window, days")
    parser.add_argument(
        "--delay-days",
        type=float,
        default=7.0,
        help="gap between training and test = label delay, days; files without a known_at "
        "column have their frauds taken as known this long after the transaction",
    )
    parser.add_argument("--test-days", type=float, default=7.0, help="test window, days")
    parser.add_argument(
        "--valid-days", type=float, help="validation window, days (default: --test-days)"
    )
    parser.add_argument("--no-search", action="store_true", help="skip the hyper-parameter search")
    parser.add_argument(
        "--compare-base-score",
        action="store_true",
        help="also fit the chosen setting with base_score=0.5 instead of XGBoost's intercept "
        "fitted to the labels; the better on validation is kept and both are reported",
    )
    parser.add_argument(
        "--target-precision",
        type=float,
        help="operating threshold: the lowest reaching this precision on validation "
        "(default: best F1)",
    )


def run_train(args: argparse.Namespace) -> int:
    from fraudapp.ml import tracking, training
    from fraudapp.settings import Settings

    settings = Settings()
    source = args.source or ("file" if args.data else "simulator")
    history, default_split = _load(args, source, settings=settings)
    config = _config(args)
    split = _split(args, default_split)
    uri = tracking.tracking_uri(
        settings.data_dir, args.tracking_uri or settings.mlflow_tracking_uri
    )
    print(f"data: {history.source}, {len(history.transactions):,} transactions")
    print(f"split: {split.describe()}")
    print(f"tracking: {uri}")
    trained = training.train(history, split, config, tracking_uri=uri, run_name=args.run_name)
    metrics = trained.fitted.test_metrics
    k = config.top_k
    print(
        f"registered {tracking.MODEL_NAME} version {trained.version} (run {trained.run_id}): "
        f"AUC {metrics['auc_roc']:.4f}, AP {metrics['average_precision']:.4f}, "
        f"card precision@{k} {metrics[f'card_precision_at_{k}']:.4f}, "
        f"threshold {trained.fitted.threshold:.4f}"
    )
    seconds = ", ".join(f"{name} {value:.1f}s" for name, value in trained.seconds.items())
    print(f"time: {seconds}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from fraudapp.ml import evaluation
    from fraudapp.ml.protocol import prequential_splits

    source = "file" if args.data else "simulator"
    history, default_split = _load(args, source, settings=None)
    config = _config(args)
    splits = prequential_splits(_split(args, default_split), args.folds)
    report = evaluation.evaluate(history, splits, config)
    print(evaluation.describe(report))
    print()
    print(evaluation.format_table(report))
    if args.json:
        evaluation.write_json(report, args.json)
        print(f"\nwrote {args.json}")
    sys.stdout.flush()
    return 0


def _config(args: argparse.Namespace) -> TrainConfig:
    from fraudapp.ml.training import TrainConfig

    for name in ("train_days", "delay_days", "test_days"):
        if getattr(args, name) < 0 or (name != "delay_days" and getattr(args, name) == 0):
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    return TrainConfig(
        train_days=args.train_days,
        delay_days=args.delay_days,
        test_days=args.test_days,
        valid_days=args.valid_days,
        search=not args.no_search,
        compare_base_score=args.compare_base_score,
        target_precision=args.target_precision,
    )


def _split(args: argparse.Namespace, default: Split) -> Split:
    from fraudapp.ml.protocol import make_split

    if args.start is None:
        return default
    try:
        start = datetime.fromisoformat(args.start)
    except ValueError as exc:
        raise ValueError(f"--start {args.start!r} is not a date (YYYY-MM-DD)") from exc
    return make_split(
        start, train_days=args.train_days, delay_days=args.delay_days, test_days=args.test_days
    )


def _load(
    args: argparse.Namespace, source: str, *, settings: Settings | None
) -> tuple[LabelledHistory, Split]:
    """The history and the split ending with its last complete day."""
    import pandas as pd

    from fraudapp.ml import dataset
    from fraudapp.ml.protocol import DAY, day_floor, latest_split

    windows = {
        "train_days": args.train_days,
        "delay_days": args.delay_days,
        "test_days": args.test_days,
    }
    if source == "file":
        if args.data is None:
            raise ValueError("--source file needs --data PATH")
        history = dataset.load_file(args.data, delay_days=args.delay_days)
        end = history.end
        # A file's last day counts as complete when it runs past 23:00.
        last_day = day_floor(end)
        complete = end - last_day >= pd.Timedelta(hours=23)
        return history, latest_split(last_day + DAY if complete else last_day, **windows)
    now = pd.Timestamp.now(tz="UTC")
    if source == "simulator":
        start = now.normalize() - pd.Timedelta(days=args.days)
        history = dataset.simulate(
            days=args.days, customers=args.customers, seed=args.seed, start=start.to_pydatetime()
        )
        return history, latest_split(now.normalize(), **windows)
    if settings is None:
        from fraudapp.settings import Settings

        settings = Settings()
    since = (now - pd.Timedelta(days=args.days)).to_pydatetime()
    history = _load_postgres(settings, since=since, cutoff=now.to_pydatetime())
    return history, latest_split(now, **windows)


def _load_postgres(settings: Settings, *, since: datetime, cutoff: datetime) -> LabelledHistory:
    from contextlib import ExitStack

    from fraudapp.embedded import embedded_postgres

    with ExitStack() as stack:
        url = settings.database_url or stack.enter_context(embedded_postgres(settings.data_dir))
        return asyncio.run(_fetch_postgres(url, since=since, cutoff=cutoff))


async def _fetch_postgres(url: str, *, since: datetime, cutoff: datetime) -> LabelledHistory:
    import asyncpg

    from fraudapp.ml import dataset

    conn = await asyncpg.connect(url)
    try:
        return await dataset.load_postgres(conn, since=since, cutoff=cutoff)
    finally:
        await conn.close()
