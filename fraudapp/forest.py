"""The serving model's trees as flat arrays, walked by numba: a row in microseconds.

XGBoost's own predictor costs ~0.5 ms a call whatever the batch size; the synchronous decision
path scores one row at a time and micro-batches can be small, so `fraudapp.model` predicts (and
explains) with this walk instead. It reads the booster's JSON dump and reproduces XGBoost's
arithmetic: float32 comparisons `value < split` (missing values take the default branch),
float32 sums from the base margin, Saabas contributions from the cover-weighted node means.
A test holds it to XGBoost's own output.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import xgboost as xgb
from numba import njit


@dataclass(frozen=True, slots=True)
class Forest:
    """Every node of every tree; children index the same arrays, -1 marks a leaf."""

    feature: np.ndarray  # int32 split feature
    split: np.ndarray  # float32 threshold (the value at a leaf)
    left: np.ndarray  # int32
    right: np.ndarray  # int32
    default_left: np.ndarray  # bool: where a missing value goes
    mean: np.ndarray  # float32 cover-weighted mean of the leaves below (Saabas attribution)
    roots: np.ndarray  # int32 first node of each tree
    base_margin: np.float32
    n_features: int

    @classmethod
    def from_booster(cls, booster: xgb.Booster) -> Forest:
        model = json.loads(booster.save_raw("json"))
        learner = model["learner"]
        objective = learner["objective"]["name"]
        if objective != "binary:logistic":
            raise ValueError(f"only binary:logistic boosters are supported, not {objective}")
        trees = learner["gradient_booster"]["model"]["trees"]
        if any(t.get("categories_nodes") for t in trees):
            raise ValueError("categorical splits are not supported")
        offsets = np.cumsum([0] + [len(t["left_children"]) for t in trees])

        def column(name: str, dtype: type) -> np.ndarray:
            return np.concatenate([np.asarray(t[name], dtype=dtype) for t in trees])

        left, right = column("left_children", np.int64), column("right_children", np.int64)
        shift = np.repeat(offsets[:-1], np.diff(offsets))
        leaf = left < 0
        split = column("split_conditions", np.float32)
        base = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
        return cls(
            feature=column("split_indices", np.int32),
            split=split,
            left=np.where(leaf, -1, left + shift).astype(np.int32),
            right=np.where(leaf, -1, right + shift).astype(np.int32),
            default_left=column("default_left", np.int64).astype(bool),
            mean=_node_means(
                np.where(leaf, -1, left + shift),
                np.where(leaf, -1, right + shift),
                split,
                column("sum_hessian", np.float64),
            ),
            roots=offsets[:-1].astype(np.int32),
            base_margin=np.float32(math.log(base / (1.0 - base))),
            n_features=int(learner["learner_model_param"]["num_feature"]),
        )

    def margin(self, x: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float32)
        _margin(self._rows(x), self.feature, self.split, self.left, self.right,
                self.default_left, self.roots, self.base_margin, out)  # fmt: skip
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probability of fraud per row, float32, as XGBoost computes it."""
        margin = self.margin(x)
        return (np.float32(1.0) / (np.float32(1.0) + np.exp(-margin))).astype(np.float32)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Saabas path attributions (XGBoost's approx_contribs), (n, n_features + 1), bias last."""
        out = np.zeros((len(x), self.n_features + 1), dtype=np.float32)
        _contributions(self._rows(x), self.feature, self.split, self.left, self.right,
                       self.default_left, self.mean, self.roots, self.base_margin, out)  # fmt: skip
        return out

    def _rows(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)


def _node_means(
    left: np.ndarray, right: np.ndarray, value: np.ndarray, cover: np.ndarray
) -> np.ndarray:
    """Cover-weighted mean leaf value under each node; children come after their parent."""
    mean = value.astype(np.float64)
    for node in range(len(left) - 1, -1, -1):
        a, b = left[node], right[node]
        if a >= 0:
            mean[node] = (mean[a] * cover[a] + mean[b] * cover[b]) / cover[node]
    return mean.astype(np.float32)


@njit(cache=True, inline="always")
def _leaf(x, i, feature, split, left, right, default_left, node):
    while left[node] >= 0:
        v = x[i, feature[node]]
        if np.isnan(v):
            node = left[node] if default_left[node] else right[node]
        elif v < split[node]:
            node = left[node]
        else:
            node = right[node]
    return node


@njit(cache=True)
def _margin(x, feature, split, left, right, default_left, roots, base, out):
    for i in range(x.shape[0]):
        total = base
        for root in roots:
            total += split[_leaf(x, i, feature, split, left, right, default_left, root)]
        out[i] = total


@njit(cache=True)
def _contributions(x, feature, split, left, right, default_left, mean, roots, base, out):
    bias = out.shape[1] - 1
    for i in range(x.shape[0]):
        out[i, bias] += base
        for root in roots:
            node = root
            out[i, bias] += mean[node]
            while left[node] >= 0:
                v = x[i, feature[node]]
                if np.isnan(v):
                    child = left[node] if default_left[node] else right[node]
                elif v < split[node]:
                    child = left[node]
                else:
                    child = right[node]
                out[i, feature[node]] += mean[child] - mean[node]
                node = child
