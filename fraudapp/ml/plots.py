"""Pictures of a fitted model for its MLflow run: ROC and PR curves, importance, score spread.

Drawn with matplotlib's Agg backend (no display; safe in the app's training thread) and handed
to `fraudapp.ml.tracking`, which stores them as PNG artifacts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xgboost as xgb
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve


def roc_figure(y: np.ndarray, score: np.ndarray, *, auc: float) -> Figure:
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    if np.unique(y).size == 2:
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, test window")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def pr_figure(y: np.ndarray, score: np.ndarray, *, ap: float, threshold: float) -> Figure:
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.subplots()
    if np.any(y):
        precision, recall, thresholds = precision_recall_curve(y, score)
        ax.plot(recall, precision, label=f"model (AP {ap:.3f})")
        at = min(int(np.searchsorted(thresholds, threshold)), len(thresholds) - 1)
        ax.scatter(
            [recall[at]],
            [precision[at]],
            color="crimson",
            zorder=3,
            label=f"operating point (p ≥ {threshold:.3f})",
        )
        ax.axhline(float(np.mean(y)), linestyle="--", color="grey", label="fraud rate")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, test window")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def importance_figure(booster: xgb.Booster, feature_names: Sequence[str]) -> Figure:
    """Total gain per feature, largest first."""
    gain = booster.get_score(importance_type="total_gain")
    values = np.array([gain.get(name, 0.0) for name in feature_names], dtype=np.float64)
    total = values.sum() or 1.0
    order = np.argsort(values)
    fig = Figure(figsize=(6, max(3.0, 0.28 * len(feature_names) + 1)), dpi=100)
    ax = fig.subplots()
    ax.barh([feature_names[i] for i in order], values[order] / total)
    ax.set(xlabel="share of total gain", title="Feature importance")
    fig.tight_layout()
    return fig


def score_distribution_figure(y: np.ndarray, score: np.ndarray, *, threshold: float) -> Figure:
    """Histograms of the predicted probability per class (log counts), threshold marked."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    bins = [i / 50 for i in range(51)]
    ax.hist(score[~y.astype(bool)], bins=bins, alpha=0.6, label="legitimate", log=True)
    ax.hist(score[y.astype(bool)], bins=bins, alpha=0.6, label="fraud", log=True)
    ax.axvline(threshold, color="crimson", linestyle="--", label="threshold")
    ax.set(xlabel="predicted fraud probability", ylabel="transactions", title="Score by class")
    ax.legend(loc="upper center")
    fig.tight_layout()
    return fig
