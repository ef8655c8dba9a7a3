"""Training benchmark (`fraudapp bench training`): features + fit on simulated history.

Prints the wall time of each stage of `fraudapp.ml.training.train` (features over every row,
hyper-parameter search on validation, final fit, MLflow logging) on ~1,000,000 transactions,
the model's test metrics, and optionally the first-start training of a brand-new install.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "training", help="time features + fit on simulated history (and the first model)"
    )
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=50, help="simulated days (~2 tx/customer/day)")
    parser.add_argument("--train-days", type=float, default=21.0)
    parser.add_argument("--delay-days", type=float, default=7.0)
    parser.add_argument("--test-days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-search", action="store_true", help="base parameters only")
    parser.add_argument(
        "--compare-base-score", action="store_true", help="also fit with base_score=0.5"
    )
    parser.add_argument(
        "--first-model", action="store_true", help="also time `train_first_model` (defaults)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fraudapp import model
    from fraudapp.ml import dataset, training
    from fraudapp.ml.protocol import latest_split

    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    started = time.perf_counter()
    history = dataset.simulate(
        days=args.days,
        customers=args.customers,
        seed=args.seed,
        start=end - timedelta(days=args.days),
    )
    n = len(history.transactions)
    frauds = int(history.transactions["is_fraud"].sum())
    print(
        f"history: {n:,} transactions ({frauds:,} frauds), {args.customers:,} customers, "
        f"{args.days} days (simulated in {time.perf_counter() - started:.1f} s)"
    )
    config = training.TrainConfig(
        train_days=args.train_days,
        delay_days=args.delay_days,
        test_days=args.test_days,
        search=not args.no_search,
        compare_base_score=args.compare_base_score,
    )
    split = latest_split(
        end, train_days=args.train_days, delay_days=args.delay_days, test_days=args.test_days
    )
    with tempfile.TemporaryDirectory(prefix="fraudapp-bench-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        cpu = time.process_time()
        trained = training.train(history, split, config, tracking_uri=uri, run_name="bench")
        cpu = time.process_time() - cpu
        seconds = trained.seconds
        fitted = trained.fitted
        fit_seconds = seconds["search"] + seconds["fit"]
        print(f"split: {split.describe()}; rows {fitted.rows}")
        print(
            f"features {seconds['features']:.1f} s + search {seconds['search']:.1f} s + final "
            f"fit {seconds['fit']:.1f} s = {seconds['features'] + fit_seconds:.1f} s "
            f"(features + fit); with MLflow logging and registry: {seconds['total']:.1f} s "
            f"wall, {cpu:.1f} s CPU; load average {os.getloadavg()[0]:.1f} on "
            f"{os.cpu_count()} cores"
        )
        for candidate in fitted.candidates:
            print(
                f"  candidate {candidate.params.get('max_depth')}/"
                f"{candidate.params.get('learning_rate')}/"
                f"{candidate.params.get('min_child_weight')}"
                f"{' base_score=0.5' if 'base_score' in candidate.params else ''}: "
                f"{candidate.rounds} trees, valid AP {candidate.valid['average_precision']:.4f}, "
                f"AUC {candidate.valid['auc_roc']:.4f}, {candidate.seconds:.1f} s"
            )
        if fitted.base_score.get("valid_ap_0.5") is not None:
            b = fitted.base_score
            print(
                f"base_score: fitted {b['fitted']:.5f} (AP {b['valid_ap_fitted']:.4f}, AUC "
                f"{b['valid_auc_fitted']:.4f}, {b['rounds_fitted']:.0f} trees) vs 0.5 (AP "
                f"{b['valid_ap_0.5']:.4f}, AUC {b['valid_auc_0.5']:.4f}, "
                f"{b['rounds_0.5']:.0f} trees)"
            )
        _print_metrics(fitted.test_metrics, fitted.threshold)

        table = trained.table
        started = time.perf_counter()
        training.fit(
            table.matrix,
            history.transactions["is_fraud"].to_numpy(),
            fitted.params,
            rounds=fitted.rounds,
            feature_names=table.feature_names,
            nthread=config.nthread,
        )
        print(
            f"one fit on all {n:,} rows ({fitted.rounds} trees): "
            f"{time.perf_counter() - started:.1f} s"
        )

        served = model.load_version(uri, trained.version)
        rows = table.matrix[:2048]
        served.predict(rows)
        started = time.perf_counter()
        for _ in range(20):
            served.predict(rows)
        per_batch = (time.perf_counter() - started) / 20
        started = time.perf_counter()
        for i in range(200):
            served.predict(rows[i : i + 1])
        per_row_call = (time.perf_counter() - started) / 200
        started = time.perf_counter()
        served.contributions(rows[:512])
        approx = (time.perf_counter() - started) / 512
        started = time.perf_counter()
        served.exact_contributions(rows[:64])
        exact = (time.perf_counter() - started) / 64
        print(
            f"serving: predict 2,048 rows {per_batch * 1e3:.2f} ms "
            f"({per_batch / 2048 * 1e6:.1f} µs/row), one row {per_row_call * 1e3:.2f} ms/call; "
            f"approximate contributions {approx * 1e6:.0f} µs/row, exact {exact * 1e3:.2f} ms/row"
        )

    if args.first_model:
        stages: list[str] = []
        with tempfile.TemporaryDirectory(prefix="fraudapp-bench-") as tmp:
            uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            started = time.perf_counter()
            marks: dict[str, float] = {}

            def progress(stage: str, fraction: float) -> None:
                if stage not in marks:
                    marks[stage] = time.perf_counter() - started
                    stages.append(stage)

            first = model.train_first_model(tracking_uri=uri, progress=progress)
            total = time.perf_counter() - started
            timeline = ", ".join(f"{stage} at {marks[stage]:.1f} s" for stage in stages)
            print(f"first model: version {first.version} in {total:.1f} s ({timeline})")
            _print_metrics(dict(first.metrics), first.threshold)
    return 0


def _print_metrics(metrics: dict[str, float], threshold: float) -> None:
    def value(name: str) -> float:
        return float(metrics.get(name, np.nan))

    print(
        f"test: AUC {value('auc_roc'):.4f}, AP {value('average_precision'):.4f}, card "
        f"precision@100 {value('card_precision_at_100'):.4f}; at threshold {threshold:.4f}: "
        f"precision {value('precision'):.3f}, recall {value('recall'):.3f}, F1 {value('f1'):.3f}"
    )
    scenarios = sorted(k for k in metrics if k.startswith("recall_scenario_"))
    if scenarios:
        print(
            "recall by scenario: "
            + ", ".join(
                f"{k.removeprefix('recall_scenario_')}: {metrics[k]:.2f}" for k in scenarios
            )
        )
