"""The time-ordered protocol: which rows train a model, which test it, and the gap between.

A `Split` is a training window, a gap as long as the label delay (frauds there are not known
yet when the model is trained) and a test window. Test rows of cards already known to be
compromised before the test day are left out: those cards are blocked already, so catching them
again says nothing. Hyper-parameters are chosen on a validation split placed before the test
window (`validation_split`), never on the test; `prequential_splits` repeats a split further back
in time to measure the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd

DAY = pd.Timedelta(days=1)


def day_floor(ts: pd.Timestamp | datetime | date | str) -> pd.Timestamp:
    """Midnight UTC of the day `ts` falls in (naive values are taken as UTC)."""
    stamp = pd.Timestamp(ts)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.normalize()


@dataclass(frozen=True)
class Split:
    """Train on [train_start, train_end), wait out [train_end, test_start), test on the rest."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp

    def __post_init__(self) -> None:
        if not self.train_start < self.train_end <= self.test_start < self.test_end:
            raise ValueError(f"windows out of order: {self.describe()}")

    @property
    def gap(self) -> pd.Timedelta:
        return self.test_start - self.train_end

    @property
    def test_days(self) -> int:
        return math.ceil((self.test_end - self.test_start) / DAY)

    def shifted(self, delta: pd.Timedelta) -> Split:
        return Split(
            self.train_start + delta,
            self.train_end + delta,
            self.test_start + delta,
            self.test_end + delta,
        )

    def describe(self) -> str:
        def d(ts: pd.Timestamp) -> str:
            return ts.isoformat() if ts != ts.normalize() else ts.date().isoformat()

        return (
            f"train [{d(self.train_start)}, {d(self.train_end)}) "
            f"gap {self.gap / DAY:g}d test [{d(self.test_start)}, {d(self.test_end)})"
        )

    def as_params(self, prefix: str = "") -> dict[str, str]:
        return {
            f"{prefix}train_start": self.train_start.isoformat(),
            f"{prefix}train_end": self.train_end.isoformat(),
            f"{prefix}test_start": self.test_start.isoformat(),
            f"{prefix}test_end": self.test_end.isoformat(),
        }


def make_split(
    start: pd.Timestamp | datetime | date | str,
    *,
    train_days: float,
    delay_days: float,
    test_days: float,
) -> Split:
    """The split whose training window opens at midnight UTC of `start`."""
    train_start = day_floor(start)
    train_end = train_start + pd.Timedelta(days=train_days)
    test_start = train_end + pd.Timedelta(days=delay_days)
    return Split(train_start, train_end, test_start, test_start + pd.Timedelta(days=test_days))


def latest_split(
    history_end: pd.Timestamp, *, train_days: float, delay_days: float, test_days: float
) -> Split:
    """The split whose test window ends with the last complete day before `history_end`.

    `history_end` is exclusive (the simulator's `start + days`); a partial last day, as in a
    history ending now, is left out of the test.
    """
    test_end = day_floor(history_end)
    start = test_end - pd.Timedelta(days=train_days + delay_days + test_days)
    return make_split(start, train_days=train_days, delay_days=delay_days, test_days=test_days)


def validation_split(
    split: Split, *, history_start: pd.Timestamp, valid_days: float | None = None
) -> Split:
    """A split wholly before `split.test_start` for choosing hyper-parameters and the threshold.

    The validation window is the last `valid_days` (default: the test window's length) of the
    training window; its own training window, as long as the real one, ends a label delay
    before it, reaching back before `split.train_start` when history allows (the handbook's
    arrangement). When history is too short for that, the validation window shrinks to a third
    of the training window and the gap to what leaves half the training length to fit on.
    """
    default = split.test_end - split.test_start
    valid = pd.Timedelta(days=valid_days) if valid_days is not None else default
    train_length = split.train_end - split.train_start
    shortest = train_length / 2
    first_day = day_floor(history_start)
    valid_end = split.train_end
    valid_start = valid_end - valid
    train_end = valid_start - split.gap
    train_start = max(first_day, train_end - train_length)
    if train_end - train_start < shortest:
        valid_start = valid_end - min(valid, train_length / 3)
        train_start = max(first_day, valid_start - train_length)
        room = valid_start - train_start
        gap = min(max(room - shortest, pd.Timedelta(0)), split.gap)
        train_end = valid_start - gap
    if train_end <= train_start:
        raise ValueError(
            f"no history before the validation window [{valid_start}, {valid_end}) to train "
            "on: start the split later or load earlier history"
        )
    return Split(train_start, train_end, valid_start, valid_end)


def prequential_splits(split: Split, folds: int) -> list[Split]:
    """`split` and `folds - 1` copies moved back in time by one test window each."""
    if folds < 1:
        raise ValueError("folds must be at least 1")
    step = split.test_end - split.test_start
    return [split.shifted(-step * i) for i in range(folds)]


def window_mask(timestamps: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> np.ndarray:
    """Rows with start <= timestamp < end."""
    return ((timestamps >= start) & (timestamps < end)).to_numpy()


def day_index(timestamps: pd.Series, start: pd.Timestamp) -> np.ndarray:
    """Per row, whole days since `start` (0 for the first day of a window opening at `start`)."""
    return ((timestamps - start) // DAY).to_numpy(dtype=np.int64)


def evaluation_mask(
    timestamps: pd.Series,
    customer_id: pd.Series,
    fraud_known_at: pd.Series,
    split: Split,
) -> np.ndarray:
    """Test-window rows, less those of cards known compromised before the row's test day.

    A card is known compromised from the moment the first fraud on it became known
    (`fraud_known_at`, NaT for transactions never known as fraud); its rows on any later test
    day are dropped.
    """
    in_window = window_mask(timestamps, split.test_start, split.test_end)
    first_known = fraud_known_at.groupby(customer_id.to_numpy()).min()
    known_since = customer_id[in_window].map(first_known)
    days = day_index(timestamps[in_window], split.test_start)
    day_start = split.test_start + pd.to_timedelta(days, unit="D")
    compromised = (known_since.notna().to_numpy()) & (known_since.to_numpy() < day_start)
    mask = in_window.copy()
    mask[np.flatnonzero(in_window)[compromised]] = False
    return mask
