"""Offline evaluation: the protocol over one or more splits of any labelled history, as a report.

`fraudapp evaluate` runs this on a file (or simulated history) without touching MLflow: features
once, then for each split (prequential folds move it back in time) the same search, fit and
test as training, and a table of the test metrics (mean ± std over folds) plus JSON.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fraudapp.ml.dataset import LabelledHistory
from fraudapp.ml.protocol import Split
from fraudapp.ml.training import (
    FittedSplit,
    Progress,
    TrainConfig,
    build_features,
    fit_split,
)

# Rows of the printed table, in order; recall per scenario follows when known.
HEADLINE = (
    "auc_roc",
    "average_precision",
    "card_precision_at_{k}",
    "precision",
    "recall",
    "f1",
    "threshold",
    "tp",
    "fp",
    "tn",
    "fn",
    "transactions",
    "frauds",
)


@dataclass(frozen=True)
class Evaluation:
    """Fitted splits (one per fold, latest first) over one history."""

    source: str
    folds: list[FittedSplit]
    feature_names: tuple[str, ...]
    left_out: tuple[str, ...]
    seconds: dict[str, float]
    top_k: int

    def summary(self) -> dict[str, dict[str, float]]:
        """Per test metric: mean and standard deviation over folds (NaN folds skipped)."""
        names: list[str] = []
        for fold in self.folds:
            names.extend(n for n in fold.test_metrics if n not in names)
        out = {}
        for name in names:
            values = np.array(
                [f.test_metrics.get(name, math.nan) for f in self.folds], dtype=np.float64
            )
            finite = values[np.isfinite(values)]
            out[name] = {
                "mean": float(finite.mean()) if finite.size else math.nan,
                "std": float(finite.std()) if finite.size > 1 else 0.0,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "feature_names": list(self.feature_names),
            "features_left_out": list(self.left_out),
            "top_k": self.top_k,
            "summary": self.summary(),
            "folds": [
                {
                    "split": {k: v for k, v in fold.split.as_params().items()},
                    "validation_split": fold.valid_split.as_params(),
                    "params": fold.params,
                    "rounds": fold.rounds,
                    "threshold": fold.threshold,
                    "test": fold.test_metrics,
                    "validation": fold.valid_metrics,
                    "base_score": fold.base_score,
                    "rows": fold.rows,
                    "seconds": fold.seconds,
                }
                for fold in self.folds
            ],
            "seconds": self.seconds,
        }


def evaluate(
    history: LabelledHistory,
    splits: list[Split],
    config: TrainConfig,
    *,
    progress: Progress | None = None,
) -> Evaluation:
    """Features once, then search, fit and test through every split."""
    report = progress or (lambda stage, fraction: None)
    started = time.perf_counter()
    report("features", 0.0)
    table = build_features(history, label_delay_days=round(config.delay_days))
    folds = []
    for i, split in enumerate(splits):
        share = 0.2 + 0.8 * i / len(splits)
        report("fold", share)
        folds.append(fit_split(table, split, config))
    report("done", 1.0)
    seconds = {"features": table.seconds, "total": time.perf_counter() - started}
    return Evaluation(
        history.source, folds, table.feature_names, table.left_out, seconds, config.top_k
    )


def format_table(evaluation: Evaluation) -> str:
    """The test metrics as an aligned text table (mean ± std when there are several folds)."""
    summary = evaluation.summary()
    k = evaluation.top_k
    names = [n.format(k=k) for n in HEADLINE]
    names += sorted(n for n in summary if n.startswith("recall_scenario_"))
    several = len(evaluation.folds) > 1
    width = max(len(n) for n in names) + 2
    header = "metric".ljust(width) + ("mean ± std" if several else "value")
    lines = [header, "-" * (len(header) + 12)]
    for name in names:
        if name not in summary:
            continue
        mean, std = summary[name]["mean"], summary[name]["std"]
        counts = name in ("tp", "fp", "tn", "fn", "transactions", "frauds")
        value = f"{mean:.0f}" if counts else f"{mean:.4f}"
        if several and not counts:
            value += f" ± {std:.4f}"
        lines.append(name.ljust(width) + value)
    return "\n".join(lines)


def describe(evaluation: Evaluation) -> str:
    """A few lines of context printed above the table: data, windows, features left out."""
    lines = [f"data: {evaluation.source}"]
    for fold in evaluation.folds:
        lines.append(
            f"fold: {fold.split.describe()}; validation {fold.valid_split.describe()}; "
            f"{fold.rows['train']} train rows, {fold.rows['test']} test rows "
            f"({fold.rows['test_frauds']} frauds); {fold.rounds} trees"
        )
    lines.append(
        f"features ({len(evaluation.feature_names)}): {', '.join(evaluation.feature_names)}"
    )
    if evaluation.left_out:
        lines.append(f"left out (the data lacks their columns): {', '.join(evaluation.left_out)}")
    return "\n".join(lines)


def write_json(evaluation: Evaluation, path: Path) -> None:
    """The report as strict JSON (NaN, e.g. AUC of a window without fraud, becomes null)."""
    payload = _finite(evaluation.to_dict())
    path.write_text(json.dumps(payload, indent=2, default=_jsonable, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
