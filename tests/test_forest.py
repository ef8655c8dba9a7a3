"""The flat forest reproduces XGBoost's predictions and approximate contributions."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from fraudapp.forest import Forest


@pytest.fixture(scope="module")
def booster_and_rows() -> tuple[xgb.Booster, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6_000, 8)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan  # missing values take each split's default branch
    y = ((np.nan_to_num(x[:, 0]) + x[:, 1] ** 2 > 1.5) ^ (rng.random(6_000) < 0.05)).astype(int)
    params = {"objective": "binary:logistic", "max_depth": 5, "eta": 0.2, "seed": 0}
    booster = xgb.train(params, xgb.DMatrix(x[:4_000], y[:4_000]), num_boost_round=40)
    return booster, x[4_000:]


def test_margins_are_xgboosts_exactly(booster_and_rows: tuple[xgb.Booster, np.ndarray]) -> None:
    booster, x = booster_and_rows
    forest = Forest.from_booster(booster)
    expected = booster.inplace_predict(x, predict_type="margin")
    np.testing.assert_array_equal(forest.margin(x), expected)
    # the sigmoid may differ by one float32 ulp (XGBoost has its own expf)
    np.testing.assert_allclose(forest.predict(x), booster.inplace_predict(x), rtol=0, atol=1.2e-7)
    np.testing.assert_array_equal(forest.predict(x[:1]), forest.predict(x)[:1])


def test_contributions_are_xgboosts_approximate_ones(
    booster_and_rows: tuple[xgb.Booster, np.ndarray],
) -> None:
    booster, x = booster_and_rows
    forest = Forest.from_booster(booster)
    expected = booster.predict(xgb.DMatrix(x), pred_contribs=True, approx_contribs=True)
    contributions = forest.contributions(x)
    assert contributions.shape == expected.shape
    np.testing.assert_allclose(contributions, expected, rtol=0, atol=1e-5)
    # they add up to the margin
    np.testing.assert_allclose(contributions.sum(axis=1), forest.margin(x), atol=1e-4)


def test_other_objectives_are_refused() -> None:
    x = np.random.default_rng(1).normal(size=(200, 3))
    booster = xgb.train({"objective": "reg:squarederror"}, xgb.DMatrix(x, x[:, 0]), 3)
    with pytest.raises(ValueError, match="binary:logistic"):
        Forest.from_booster(booster)
