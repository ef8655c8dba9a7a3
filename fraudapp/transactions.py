"""What a transaction and a label event are as they move through the flow.

A batch is columns (numpy arrays), never a list of per-transaction objects: the simulator, the
API, the feature state, the model and the store all speak `TransactionBatch`. History for
training and evaluation is the same columns as a pandas DataFrame (`TRANSACTION_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

# Columns a processor sends us, in this order, as in files, frames and batches.
TRANSACTION_COLUMNS: tuple[str, ...] = (
    "transaction_id",  # str, unique
    "timestamp",  # datetime64[us], UTC (naive in numpy, tz-aware UTC in pandas frames)
    "customer_id",  # str (the card / account)
    "terminal_id",  # str (the terminal or merchant)
    "merchant_category",  # str, ISO 18245 merchant category code, e.g. "5411"
    "amount",  # float64, > 0
    "currency",  # str, ISO 4217, e.g. "EUR"
    "channel",  # "card_present" or "online"
    "terminal_lat",  # float64 degrees (NaN when unknown)
    "terminal_lon",  # float64 degrees (NaN when unknown)
)

# A label event: a verdict on one transaction that becomes known at `known_at`.
LABEL_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",  # the labelled transaction's own timestamp
    "customer_id",
    "terminal_id",
    "is_fraud",  # bool
    "known_at",  # when the verdict became known (chargeback date, analyst's click)
    "source",  # "chargeback", "analyst", "import"
)

CHANNELS: tuple[str, ...] = ("card_present", "online")

_OBJECT_COLUMNS = frozenset(
    {"transaction_id", "customer_id", "terminal_id", "merchant_category", "currency", "channel"}
)


@dataclass(frozen=True, slots=True)
class TransactionBatch:
    """A batch of transactions as parallel columns; row i is one transaction."""

    transaction_id: np.ndarray
    timestamp: np.ndarray
    customer_id: np.ndarray
    terminal_id: np.ndarray
    merchant_category: np.ndarray
    amount: np.ndarray
    currency: np.ndarray
    channel: np.ndarray
    terminal_lat: np.ndarray
    terminal_lon: np.ndarray

    def __len__(self) -> int:
        return len(self.transaction_id)

    def take(self, index: np.ndarray | slice) -> TransactionBatch:
        return TransactionBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def to_frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({name: getattr(self, name) for name in TRANSACTION_COLUMNS})
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
        return frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> TransactionBatch:
        """Columns of a frame holding at least `TRANSACTION_COLUMNS`."""
        ts = frame["timestamp"]
        if isinstance(ts.dtype, pd.DatetimeTZDtype):
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        columns = {
            name: frame[name].to_numpy(dtype=object if name in _OBJECT_COLUMNS else np.float64)
            for name in TRANSACTION_COLUMNS
            if name != "timestamp"
        }
        columns["timestamp"] = ts.to_numpy(dtype="datetime64[us]")
        return cls(**columns)

    @classmethod
    def concat(cls, batches: Sequence[TransactionBatch]) -> TransactionBatch:
        if len(batches) == 1:
            return batches[0]
        return cls(*(np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)))

    @classmethod
    def empty(cls) -> TransactionBatch:
        return cls(
            *(
                np.empty(
                    0,
                    dtype=object
                    if f.name in _OBJECT_COLUMNS
                    else ("datetime64[us]" if f.name == "timestamp" else np.float64),
                )
                for f in fields(cls)
            )
        )
