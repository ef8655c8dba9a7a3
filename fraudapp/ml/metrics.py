"""How good a model is on a test window: ranking, card-level precision and the operating point.

AUC ROC and average precision judge the ranking of transactions. Card precision@k judges what
investigators see: each day the k cards with the highest score that day, of which the share
really compromised; cards caught on an earlier day are removed from later days (they are
blocked by then); the daily values are averaged. The divisor is always k, as in the Fraud
Detection Handbook, so numbers compare with its published ones. Precision, recall, F1 and the
confusion matrix are taken at the operating threshold chosen on validation data.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def auc_roc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when the labels hold a single class."""
    if np.unique(y).size < 2:
        return math.nan
    return float(roc_auc_score(y, score))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve); NaN with no fraud."""
    if not np.any(y):
        return math.nan
    return float(average_precision_score(y, score))


def card_precision_at_k(
    day: np.ndarray,
    customer_id: np.ndarray,
    y: np.ndarray,
    score: np.ndarray,
    *,
    k: int = 100,
) -> tuple[float, list[float]]:
    """Mean over days of the share of true compromised cards among each day's top-k cards.

    A card's score on a day is its highest transaction score that day, and it counts as
    compromised that day when any of its transactions that day is fraud. Cards found (fraud
    and in the top k) on a day are removed from the following days.
    """
    frame = pd.DataFrame({"day": day, "card": customer_id, "y": y.astype(bool), "score": score})
    caught: set[object] = set()
    daily: list[float] = []
    for _, rows in frame.groupby("day", sort=True):
        rows = rows[~rows["card"].isin(caught)]
        cards = rows.groupby("card", sort=True).agg(score=("score", "max"), y=("y", "max"))
        top = cards.sort_values("score", ascending=False, kind="stable").head(k)
        found = top.index[top["y"].to_numpy()]
        daily.append(len(found) / k)
        caught.update(found)
    return (float(np.mean(daily)) if daily else math.nan), daily


def confusion(y: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Counts of true/false positives/negatives."""
    y = y.astype(bool)
    predicted = predicted.astype(bool)
    return {
        "tp": int(np.sum(y & predicted)),
        "fp": int(np.sum(~y & predicted)),
        "tn": int(np.sum(~y & ~predicted)),
        "fn": int(np.sum(y & ~predicted)),
    }


def operating_point(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and the confusion matrix of flagging score >= threshold."""
    counts = confusion(y, score >= threshold)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {"precision": precision, "recall": recall, "f1": f1, **counts}


def recall_by_scenario(
    scenario: np.ndarray, y: np.ndarray, predicted: np.ndarray
) -> dict[int, float]:
    """Recall within each known fraud scenario (1..n) present among the frauds."""
    frauds = y.astype(bool) & (scenario > 0)
    return {
        int(s): float(np.mean(predicted[frauds & (scenario == s)]))
        for s in np.unique(scenario[frauds])
    }


def choose_threshold(
    y: np.ndarray, score: np.ndarray, *, target_precision: float | None = None
) -> float:
    """The operating threshold: best F1, or the lowest reaching `target_precision`.

    Falls back to best F1 when no threshold reaches the target, and to 0.5 when there is no
    fraud to learn from.
    """
    if not np.any(y):
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, score)
    # precision/recall have one more entry than thresholds (the point at recall 0).
    precision, recall = precision[:-1], recall[:-1]
    if target_precision is not None:
        reaching = np.flatnonzero(precision >= target_precision)
        if reaching.size:
            return float(thresholds[reaching[0]])
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thresholds[int(np.argmax(f1))])


def evaluate_scores(
    *,
    y: np.ndarray,
    score: np.ndarray,
    day: np.ndarray,
    customer_id: np.ndarray,
    threshold: float,
    scenario: np.ndarray | None = None,
    k: int = 100,
) -> dict[str, float]:
    """Every metric of one test window, as a flat dict of floats (MLflow and JSON ready)."""
    card_precision, _ = card_precision_at_k(day, customer_id, y, score, k=k)
    out: dict[str, float] = {
        "auc_roc": auc_roc(y, score),
        "average_precision": average_precision(y, score),
        f"card_precision_at_{k}": card_precision,
        "threshold": float(threshold),
        "transactions": float(len(y)),
        "frauds": float(np.sum(y)),
    }
    out.update({name: float(v) for name, v in operating_point(y, score, threshold).items()})
    if scenario is not None:
        for s, recall in recall_by_scenario(scenario, y, score >= threshold).items():
            out[f"recall_scenario_{s}"] = recall
    return out
