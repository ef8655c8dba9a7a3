"""Labelled history for training and evaluation, from the simulator, a file or PostgreSQL.

Every source ends as a `LabelledHistory`: the transactions (`TRANSACTION_COLUMNS`) with their
truth (`is_fraud`, `scenario` where known, `fraud_known_at` = when the fraud became known), the
label events the features may use, and which of the optional columns the source really had.

Files (CSV or Parquet; `.pkl` frames and folders of such files too) need only `transaction_id`,
`timestamp`, `customer_id`, `terminal_id`, `amount` and `is_fraud`; names are matched
case-insensitively and through `COLUMN_ALIASES` (so the Fraud Detection Handbook's
`TX_DATETIME`, `TX_AMOUNT`, `TX_FRAUD` ... work as they are). A `known_at` column, if present,
says when each fraud became known; without one a fraud is assumed known `delay_days` after the
transaction (the handbook's convention). Missing optional columns are filled with neutral values
and the features that need them are left out (`LabelledHistory.missing_columns`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fraudapp.transactions import LABEL_COLUMNS, TRANSACTION_COLUMNS

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "customer_id",
    "terminal_id",
    "amount",
    "is_fraud",
)
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(
    c for c in TRANSACTION_COLUMNS if c not in REQUIRED_COLUMNS
)

# Other names accepted for our columns (lower-cased; file column names are lower-cased first).
COLUMN_ALIASES: dict[str, str] = {
    "tx_datetime": "timestamp",
    "tx_time": "timestamp",
    "datetime": "timestamp",
    "occurred_at": "timestamp",
    "tx_amount": "amount",
    "tx_fraud": "is_fraud",
    "fraud": "is_fraud",
    "tx_fraud_scenario": "scenario",
    "card_id": "customer_id",
    "merchant_id": "terminal_id",
    "mcc": "merchant_category",
    "reported_at": "known_at",
    "label_known_at": "known_at",
}

# Neutral values for optional columns a file lacks, so feature code sees the full contract.
_FILL_VALUES: dict[str, Any] = {
    "merchant_category": "0000",
    "currency": "EUR",
    "channel": "card_present",
    "terminal_lat": np.nan,
    "terminal_lon": np.nan,
}
_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq", ".pkl", ".pickle")


@dataclass(frozen=True)
class LabelledHistory:
    """Transactions with their truth, sorted by time, and the label events known about them."""

    transactions: pd.DataFrame  # TRANSACTION_COLUMNS + is_fraud, scenario, fraud_known_at
    labels: pd.DataFrame  # LABEL_COLUMNS
    source: str
    missing_columns: frozenset[str] = field(default_factory=frozenset)

    @property
    def columns(self) -> list[str]:
        """The transaction columns the source really had (what features may rely on)."""
        return [c for c in TRANSACTION_COLUMNS if c not in self.missing_columns]

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(self.transactions["timestamp"].iloc[0])

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(self.transactions["timestamp"].iloc[-1])

    def known_fraud(self, cutoff: pd.Timestamp) -> np.ndarray:
        """Per transaction: a fraud whose label was known by `cutoff` (what training may use)."""
        known_at = self.transactions["fraud_known_at"]
        return (self.transactions["is_fraud"] & known_at.notna() & (known_at <= cutoff)).to_numpy()


def from_frames(
    transactions: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    *,
    source: str,
    delay_days: float = 7.0,
) -> LabelledHistory:
    """Normalise a frame of transactions with truth (and optional label events) to a history.

    Column names go through `COLUMN_ALIASES`; required columns must be there; when neither a
    `known_at` column nor label events are given, frauds become known `delay_days` after the
    transaction.
    """
    frame = _rename(transactions)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        accepted = ", ".join(f"{alias}→{name}" for alias, name in COLUMN_ALIASES.items())
        raise ValueError(
            f"{source}: missing column(s) {', '.join(missing)}; required: "
            f"{', '.join(REQUIRED_COLUMNS)} (case-insensitive; also accepted: {accepted})"
        )
    absent = frozenset(c for c in OPTIONAL_COLUMNS if c not in frame.columns)
    out = pd.DataFrame(
        {
            "transaction_id": frame["transaction_id"].astype(str).to_numpy(dtype=object),
            "timestamp": _utc(frame["timestamp"]),
            "customer_id": frame["customer_id"].astype(str).to_numpy(dtype=object),
            "terminal_id": frame["terminal_id"].astype(str).to_numpy(dtype=object),
        }
    )
    for name in OPTIONAL_COLUMNS:
        if name in absent:
            out[name] = _FILL_VALUES[name]
        elif name in ("terminal_lat", "terminal_lon"):
            out[name] = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        else:
            out[name] = frame[name].astype(str).to_numpy(dtype=object)
    out["amount"] = pd.to_numeric(frame["amount"], errors="raise").to_numpy(dtype=np.float64)
    out["is_fraud"] = _as_bool(frame["is_fraud"])
    if "scenario" in frame.columns:
        scenario = pd.to_numeric(frame["scenario"], errors="coerce").fillna(0)
        out["scenario"] = scenario.to_numpy(dtype=np.int8)
    else:
        out["scenario"] = np.where(out["is_fraud"], -1, 0).astype(np.int8)
    delay = pd.Timedelta(days=delay_days)
    if "known_at" in frame.columns:
        known_at = pd.Series(_utc(frame["known_at"]), index=out.index)
    elif labels is not None:
        known_at = _fraud_known_at(out["transaction_id"], labels)
    else:
        known_at = out["timestamp"] + delay
    out["fraud_known_at"] = known_at.where(out["is_fraud"])
    out = out[[*list(TRANSACTION_COLUMNS), "is_fraud", "scenario", "fraud_known_at"]]
    out = out.sort_values("timestamp", kind="stable", ignore_index=True)
    if labels is None:
        labels = _label_events(out)
    if len(out) == 0:
        raise ValueError(f"{source}: no transactions")
    if (out["amount"] <= 0).any():
        raise ValueError(f"{source}: amounts must be > 0")
    return LabelledHistory(out, labels.reset_index(drop=True), source, absent)


def load_file(path: Path, *, delay_days: float = 7.0) -> LabelledHistory:
    """Read a CSV / Parquet / pickle file, or every such file in a folder, as a history."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.lower().endswith(_FILE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"{path}: no {', '.join(_FILE_SUFFIXES)} files in the folder")
        frame = pd.concat([_read_one(p) for p in files], ignore_index=True)
    elif path.exists():
        frame = _read_one(path)
    else:
        raise FileNotFoundError(f"{path}: no such file")
    history = from_frames(frame, source=str(path), delay_days=delay_days)
    if history.missing_columns:
        log.info(
            "dataset.columns_missing path=%s columns=%s",
            path,
            ",".join(sorted(history.missing_columns)),
        )
    return history


def simulate(
    *,
    days: int,
    customers: int | None = None,
    seed: int | None = None,
    start: datetime | None = None,
    fraud_rate: float | None = None,
) -> LabelledHistory:
    """`days` of simulated history ending at the start of today (UTC) unless `start` is given."""
    from fraudapp import generator

    config = generator.SimulationConfig()
    changes: dict[str, Any] = {}
    if customers is not None:
        changes["n_customers"] = customers
    if seed is not None:
        changes["seed"] = seed
    if fraud_rate is not None:
        changes["fraud_rate"] = fraud_rate
    config = dataclasses.replace(config, **changes)
    if start is None:
        today = pd.Timestamp.now(tz="UTC").normalize()
        start = (today - pd.Timedelta(days=days)).to_pydatetime()
    history = generator.simulate_history(config, start=start, days=days)
    labels = generator.label_events(history)
    frame = history.rename(columns={"reported_at": "known_at"})
    return from_frames(frame, labels, source=f"simulator(days={days}, seed={config.seed})")


_HISTORY_SQL = """
SELECT t.transaction_id, t.occurred_at AS timestamp, t.customer_id, t.terminal_id,
       coalesce(t.merchant_category, '0000') AS merchant_category, t.amount::float8 AS amount,
       t.currency, t.channel, t.terminal_lat, t.terminal_lon,
       coalesce(l.is_fraud, false) AS is_fraud, l.known_at,
       coalesce(s.scenario, 0)::int AS scenario
FROM transaction t
LEFT JOIN LATERAL (
    SELECT is_fraud, known_at FROM label
    WHERE label.transaction_id = t.transaction_id AND label.known_at <= $2
    ORDER BY known_at DESC, label_id DESC LIMIT 1
) l ON true
LEFT JOIN simulation_truth s ON s.transaction_id = t.transaction_id
WHERE t.occurred_at >= $1 AND t.occurred_at < $2
ORDER BY t.occurred_at, t.transaction_id
"""

_LABELS_SQL = """
SELECT l.transaction_id, t.occurred_at AS timestamp, t.customer_id, t.terminal_id,
       l.is_fraud, l.known_at, l.source
FROM label l JOIN transaction t USING (transaction_id)
WHERE t.occurred_at >= $1 AND t.occurred_at < $2 AND l.known_at <= $2
ORDER BY l.known_at, l.label_id
"""


async def fetch_labelled_history(
    db: asyncpg.Connection | asyncpg.Pool, *, since: datetime, cutoff: datetime
) -> pd.DataFrame:
    """Transactions in [since, cutoff) with the verdict known at `cutoff`.

    The latest label by `known_at` wins; a transaction with no label is taken as legitimate.
    Columns: `TRANSACTION_COLUMNS`, `is_fraud`, `known_at` (of the winning label, NaT when
    none) and `scenario` (from `simulation_truth`, 0 when absent).
    """
    rows = await db.fetch(_HISTORY_SQL, since, cutoff)
    columns = [*TRANSACTION_COLUMNS, "is_fraud", "known_at", "scenario"]
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["known_at"] = pd.to_datetime(frame["known_at"], utc=True)
    frame["is_fraud"] = frame["is_fraud"].astype(bool)
    for name in ("amount", "terminal_lat", "terminal_lon"):
        frame[name] = frame[name].astype(np.float64)
    frame["scenario"] = frame["scenario"].astype(np.int8)
    return frame


async def fetch_label_events(
    db: asyncpg.Connection | asyncpg.Pool, *, since: datetime, cutoff: datetime
) -> pd.DataFrame:
    """Every label event known by `cutoff` on transactions in [since, cutoff) (`LABEL_COLUMNS`)."""
    rows = await db.fetch(_LABELS_SQL, since, cutoff)
    frame = pd.DataFrame([tuple(r) for r in rows], columns=list(LABEL_COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["known_at"] = pd.to_datetime(frame["known_at"], utc=True)
    frame["is_fraud"] = frame["is_fraud"].astype(bool)
    return frame


async def load_postgres(
    db: asyncpg.Connection | asyncpg.Pool, *, since: datetime, cutoff: datetime
) -> LabelledHistory:
    """The app's own history as a `LabelledHistory` (truth = what was known at `cutoff`)."""
    transactions = await fetch_labelled_history(db, since=since, cutoff=cutoff)
    labels = await fetch_label_events(db, since=since, cutoff=cutoff)
    # A transaction counts as fraud when its winning label says so, known since that label's
    # `known_at`; the label events feed the features' terminal risk as they were known.
    source = f"postgres({since.isoformat()}..{cutoff.isoformat()})"
    return from_frames(transactions, labels, source=source)


def _read_one(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return pd.read_parquet(path)
    if name.endswith((".pkl", ".pickle")):
        frame = pd.read_pickle(path)
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{path}: the pickle holds a {type(frame).__name__}, not a DataFrame")
        return frame
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    raise ValueError(f"{path}: unknown file type; use one of {', '.join(_FILE_SUFFIXES)}")


def _rename(frame: pd.DataFrame) -> pd.DataFrame:
    renamed: dict[str, str] = {}
    for column in frame.columns:
        lower = str(column).strip().lower()
        renamed[column] = COLUMN_ALIASES.get(lower, lower)
    out = frame.rename(columns=renamed)
    duplicated = out.columns[out.columns.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"columns {duplicated} appear twice once names are matched")
    return out


def _utc(values: pd.Series) -> pd.Series:
    """Timestamps as tz-aware UTC; naive ones are taken to be UTC already."""
    return pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]")


def _as_bool(values: pd.Series) -> np.ndarray:
    if values.dtype == bool:
        return values.to_numpy()
    if pd.api.types.is_numeric_dtype(values):
        return (values.fillna(0).to_numpy() != 0).astype(bool)
    text = values.astype(str).str.strip().str.lower()
    return text.isin(("1", "true", "t", "yes", "y", "fraud")).to_numpy()


def _fraud_known_at(transaction_id: pd.Series, labels: pd.DataFrame) -> pd.Series:
    """For each transaction, when a fraud verdict on it first became known (NaT: never)."""
    frauds = labels.loc[labels["is_fraud"].astype(bool), ["transaction_id", "known_at"]]
    first = frauds.groupby("transaction_id")["known_at"].min()
    known = transaction_id.map(first)
    return pd.Series(pd.to_datetime(known, utc=True), index=transaction_id.index).astype(
        "datetime64[us, UTC]"
    )


def _label_events(transactions: pd.DataFrame) -> pd.DataFrame:
    """Label events implied by `fraud_known_at`: one chargeback per fraud that became known."""
    known = transactions[transactions["fraud_known_at"].notna()]
    events = known[["transaction_id", "timestamp", "customer_id", "terminal_id"]].copy()
    events["is_fraud"] = True
    events["known_at"] = known["fraud_known_at"]
    events["source"] = "import"
    return events.sort_values("known_at", kind="stable", ignore_index=True)[list(LABEL_COLUMNS)]
