"""Features: what the model sees of a transaction, defined once and computed two ways.

Between the transaction stream and the model. `definitions` says what each feature means;
`compute_features` (batch) computes them over a history frame for training and backfill;
`FeatureState` (streaming) keeps per-customer and per-terminal state and computes the same
numbers one micro-batch at a time for the scoring worker.
"""

from fraudapp.features.batch import compute_features
from fraudapp.features.definitions import (
    FEATURE_NAMES,
    FEATURES,
    Feature,
    FeatureConfig,
    available_features,
    unavailable_features,
)
from fraudapp.features.streaming import FeatureState

__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "Feature",
    "FeatureConfig",
    "FeatureState",
    "available_features",
    "compute_features",
    "unavailable_features",
]
