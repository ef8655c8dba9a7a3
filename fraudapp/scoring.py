"""Scoring: one micro-batch from transactions to decisions, features → model → policy → reasons.

Pure CPU work on columns, run on the pipeline's single scoring thread so that the feature state
is only ever touched by one thread and the event loop keeps serving. The serving model can be
swapped between batches (promotion) without a restart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fraudapp.features import FEATURE_NAMES, FeatureState
from fraudapp.model import ServingModel, risk_score
from fraudapp.policy import APPROVE, Policy
from fraudapp.transactions import TransactionBatch

NO_REASONS = "[]"


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """A micro-batch with its decisions; row i of every array is transaction i."""

    transactions: TransactionBatch
    received_at: np.ndarray  # float64, epoch seconds when each transaction entered fraudapp
    decided_at: np.ndarray  # float64, epoch seconds when each was decided
    probability: np.ndarray  # float32
    score: np.ndarray  # int16, 0–99
    decision: np.ndarray  # object: approve / review / decline
    rule: np.ndarray  # object: None / block_list / allow_list
    reasons: list[list[dict[str, object]]]  # [] for approvals
    features: np.ndarray  # float32 (n, n_model_features), the model's own column order
    feature_names: tuple[str, ...]
    model_version: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.transactions)

    @property
    def risky(self) -> np.ndarray:
        """Indices of the rows that were not approved."""
        return np.flatnonzero(self.decision != APPROVE)

    @classmethod
    def concat(cls, batches: Sequence[ScoredBatch]) -> ScoredBatch:
        """One batch of several scored by the same model version (for one write)."""
        first = batches[0]
        if len(batches) == 1:
            return first
        if any(b.model_version != first.model_version for b in batches):
            raise ValueError("cannot merge batches scored by different model versions")
        return cls(
            transactions=TransactionBatch.concat([b.transactions for b in batches]),
            received_at=np.concatenate([b.received_at for b in batches]),
            decided_at=np.concatenate([b.decided_at for b in batches]),
            probability=np.concatenate([b.probability for b in batches]),
            score=np.concatenate([b.score for b in batches]),
            decision=np.concatenate([b.decision for b in batches]),
            rule=np.concatenate([b.rule for b in batches]),
            reasons=[r for b in batches for r in b.reasons],
            features=np.concatenate([b.features for b in batches]),
            feature_names=first.feature_names,
            model_version=first.model_version,
            timings_ms={
                k: sum(b.timings_ms.get(k, 0.0) for b in batches) for k in first.timings_ms
            },
        )

    def reasons_json(self) -> list[str]:
        return [json.dumps(r) if r else NO_REASONS for r in self.reasons]

    def row(self, i: int) -> dict[str, object]:
        """One decision as plain values (for the API and the live feed)."""
        tx = self.transactions
        return {
            "transaction_id": tx.transaction_id[i],
            "timestamp": pd.Timestamp(tx.timestamp[i], tz="UTC").isoformat(),
            "customer_id": tx.customer_id[i],
            "terminal_id": tx.terminal_id[i],
            "amount": float(tx.amount[i]),
            "currency": tx.currency[i],
            "channel": tx.channel[i],
            "merchant_category": tx.merchant_category[i],
            "probability": float(self.probability[i]),
            "score": int(self.score[i]),
            "decision": self.decision[i],
            "rule": self.rule[i],
            "reasons": self.reasons[i],
            "model_version": self.model_version,
            "latency_ms": float((self.decided_at[i] - self.received_at[i]) * 1000.0),
        }


class Scorer:
    """Owns the streaming feature state and the serving model; not thread-safe by design."""

    def __init__(
        self, state: FeatureState, model: ServingModel, policy: Policy, *, reasons_top: int
    ) -> None:
        self.state = state
        self.policy = policy
        self.reasons_top = reasons_top
        self._model = model
        self._columns = self._model_columns(model)

    @staticmethod
    def _model_columns(model: ServingModel) -> np.ndarray:
        missing = [name for name in model.feature_names if name not in FEATURE_NAMES]
        if missing:
            raise ValueError(
                f"model {model.version} needs features this build does not compute: {missing}"
            )
        return np.array([FEATURE_NAMES.index(name) for name in model.feature_names])

    @property
    def model(self) -> ServingModel:
        return self._model

    def swap_model(self, model: ServingModel) -> None:
        columns = self._model_columns(model)
        self._model, self._columns = model, columns

    def add_labels(self, labels: pd.DataFrame) -> None:
        self.state.add_labels(labels)

    def score(self, batch: TransactionBatch, received_at: np.ndarray) -> ScoredBatch:
        model, columns = self._model, self._columns
        t0 = time.perf_counter()
        all_features = self.state.transform(batch)
        features = np.ascontiguousarray(all_features[:, columns], dtype=np.float32)
        t1 = time.perf_counter()
        probability = model.predict(features).astype(np.float32, copy=False)
        score = risk_score(probability)
        t2 = time.perf_counter()
        policy = self.policy.decide(score, batch.customer_id, batch.terminal_id)
        reasons: list[list[dict[str, object]]] = [[] for _ in range(len(batch))]
        risky = np.flatnonzero(policy.decision != APPROVE)
        if len(risky):
            contributions = model.contributions(features[risky])
            for j, i in enumerate(risky):
                reasons[i] = model.reasons(features[i], contributions[j], top=self.reasons_top)
        t3 = time.perf_counter()
        return ScoredBatch(
            transactions=batch,
            received_at=received_at,
            decided_at=np.full(len(batch), time.time()),
            probability=probability,
            score=score,
            decision=policy.decision,
            rule=policy.rule,
            reasons=reasons,
            features=features,
            feature_names=model.feature_names,
            model_version=model.version,
            timings_ms={
                "features": (t1 - t0) * 1e3,
                "predict": (t2 - t1) * 1e3,
                "reasons": (t3 - t2) * 1e3,
            },
        )
