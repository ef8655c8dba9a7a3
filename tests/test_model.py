"""The serving model: probabilities, contributions, reason codes and the 0–99 risk score."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from fraudapp.features import FEATURES
from fraudapp.model import ServingModel, reason_text, risk_score

NAMES = ("amount", "customer_amount_ratio_30d", "is_night", "customer_km_from_home")


@pytest.fixture(scope="module")
def serving() -> ServingModel:
    rng = np.random.default_rng(5)
    n = 4_000
    x = np.column_stack(
        [
            rng.lognormal(3.5, 1.0, n),
            rng.lognormal(0.0, 0.8, n),
            rng.random(n) < 0.2,
            rng.exponential(15.0, n),
        ]
    ).astype(np.float32)
    logit = -5 + 1.5 * np.log(x[:, 1]) + 1.2 * x[:, 2] + 0.02 * x[:, 3]
    y = rng.random(n) < 1 / (1 + np.exp(-logit))
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "nthread": 1},
        xgb.DMatrix(x, y, feature_names=list(NAMES)),
        num_boost_round=40,
    )
    return ServingModel(booster, "7", NAMES, threshold=0.3, metrics={"auc_roc": 0.9})


def test_risk_score_is_the_whole_percent_capped_at_99() -> None:
    p = np.array([0.0, 0.004, 0.01, 0.734, 0.999, 1.0, np.nan])
    score = risk_score(p)
    assert score.dtype == np.int16
    assert score.tolist() == [0, 0, 1, 73, 99, 99, 99]
    grid = np.linspace(0.0, 1.0, 10_001)
    assert np.all(np.diff(risk_score(grid)) >= 0)
    assert risk_score(grid).min() == 0 and risk_score(grid).max() == 99
    assert int(risk_score(0.42)) == 42


def test_predict_matches_the_booster_and_checks_the_width(serving: ServingModel) -> None:
    rows = np.array([[40.0, 6.2, 1.0, 3.0], [12.0, 0.8, 0.0, 1.0]], dtype=np.float32)
    expected = serving.booster.predict(xgb.DMatrix(rows, feature_names=list(NAMES)))
    np.testing.assert_allclose(serving.predict(rows), expected, rtol=1e-6)
    assert serving.predict(rows).dtype == np.float32
    assert serving.predict(rows[:0]).shape == (0,)
    assert serving.threshold_score == 30
    with pytest.raises(ValueError, match=r"takes \(n, 4\) features"):
        serving.predict(rows[:, :3])


def test_contributions_exact_and_approximate_both_sum_to_the_margin(
    serving: ServingModel,
) -> None:
    rng = np.random.default_rng(1)
    rows = np.column_stack(
        [rng.lognormal(3.5, 1, 64), rng.lognormal(0, 1, 64), rng.random(64) < 0.5, rng.random(64)]
    ).astype(np.float32)
    margin = serving.margin(rows)
    approx = serving.contributions(rows)
    exact = serving.exact_contributions(rows)
    assert approx.shape == exact.shape == (64, len(NAMES) + 1)
    np.testing.assert_allclose(approx.sum(axis=1), margin, atol=1e-4)
    np.testing.assert_allclose(exact.sum(axis=1), margin, atol=1e-4)
    # Same bias, different attributions: the approximation is not TreeSHAP.
    np.testing.assert_allclose(approx[:, -1], exact[:, -1], atol=1e-6)
    assert not np.allclose(approx[:, :-1], exact[:, :-1], atol=1e-3)


def test_reasons_name_the_top_positive_contributions_in_words(serving: ServingModel) -> None:
    row = np.array([40.0, 6.2, 1.0, 3.0], dtype=np.float32)
    contributions = np.array([0.2, 1.7, 0.9, -0.4, -3.0], dtype=np.float32)  # bias last
    reasons = serving.reasons(row, contributions, top=3)
    assert [r["feature"] for r in reasons] == [
        "customer_amount_ratio_30d",
        "is_night",
        "amount",
    ]
    first = reasons[0]
    assert first["code"] == "CUSTOMER_AMOUNT_RATIO_30D"
    assert first["text"] == "amount is 6.2× this customer's 30-day mean"
    assert first["value"] == pytest.approx(6.2, abs=1e-4)
    assert first["contribution"] == pytest.approx(1.7, abs=1e-4)
    assert reasons[1]["text"] == FEATURES["is_night"].reason
    # Features that lowered the risk are never reasons, even when fewer than `top` remain.
    only = serving.reasons(row, np.array([-0.1, 0.5, -0.2, -0.3, 0.0], dtype=np.float32), top=3)
    assert [r["feature"] for r in only] == ["customer_amount_ratio_30d"]


def test_reasons_from_real_contributions_explain_a_risky_row(serving: ServingModel) -> None:
    row = np.array([[60.0, 9.0, 1.0, 40.0]], dtype=np.float32)
    contributions = serving.contributions(row)[0]
    reasons = serving.reasons(row[0], contributions, top=2)
    assert len(reasons) == 2
    assert reasons[0]["feature"] == "customer_amount_ratio_30d"
    assert all(r["contribution"] > 0 for r in reasons)


def test_reason_text_of_an_unknown_feature_still_reads() -> None:
    assert reason_text("not_a_feature", 2.5) == "not_a_feature = 2.5"
    assert reason_text("customer_km_from_home", 412.0) == "412 km from this customer's usual area"
