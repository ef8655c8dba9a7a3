"""Scored micro-batches as PostgreSQL binary COPY streams, built from columns.

The writer's hot path: the batch's numpy columns become Arrow arrays (mostly zero-copy) and
`pgpq` encodes them to the binary COPY format in native code. Building a Python tuple per row for
`copy_records_to_table` cost the event loop about twice as much CPU per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
from pgpq import ArrowToPostgresBinaryEncoder

if TYPE_CHECKING:
    from fraudapp.scoring import ScoredBatch

UTC_MICROS = pa.timestamp("us", tz="UTC")
AMOUNT = pa.decimal128(14, 2)  # transaction.amount numeric(14, 2)


@dataclass(frozen=True, slots=True)
class CopyData:
    """One table's rows in binary COPY format, with the columns they fill, in order."""

    table: str
    columns: tuple[str, ...]
    data: bytes


def _encode(table: str, columns: dict[str, pa.Array]) -> CopyData:
    record = pa.RecordBatch.from_pydict(columns)
    encoder = ArrowToPostgresBinaryEncoder(record.schema)
    data = b"".join((encoder.write_header(), encoder.write_batch(record), encoder.finish()))
    return CopyData(table, tuple(record.schema.names), data)


def _jsonb(documents: Sequence[str]) -> pa.Array:
    """JSON texts in jsonb's binary wire format: a version byte (1), then the text.

    Sent as plain binary values: the encoder with an explicit jsonb output costs ~0.35 ms to
    build per batch against ~7 µs for the inferred one, and the bytes on the wire are the same.
    """
    return pa.array([b"\x01" + d.encode() for d in documents], type=pa.binary())


def _text(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.string(), from_pandas=True)


def _float(values: np.ndarray, dtype: type[np.floating]) -> pa.Array:
    """Floats with NULL where NaN (an unknown location)."""
    values = np.asarray(values, dtype=dtype)
    nan = np.isnan(values)
    return pa.array(values, mask=nan if nan.any() else None)


def _epoch_seconds(seconds: np.ndarray | float, n: int) -> pa.Array:
    micros = np.broadcast_to(np.round(np.asarray(seconds) * 1e6).astype(np.int64), (n,))
    return pa.array(micros.astype("datetime64[us]"), type=UTC_MICROS)


def _repeated(value: str, n: int) -> pa.Array:
    """One string n times, repeated in native code rather than a Python list."""
    return pa.array([value], type=pa.string()).take(np.zeros(n, dtype=np.int32))


def _rows_as_bytea(matrix: np.ndarray) -> pa.Array:
    """Each row of a C-contiguous matrix as one bytea value, without copying the rows."""
    n = len(matrix)
    data = np.ascontiguousarray(matrix)
    width = data.itemsize * (data.shape[1] if data.ndim > 1 else 1)
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def transaction_copy(scored: ScoredBatch, *, table: str = "transaction") -> CopyData:
    tx = scored.transactions
    n = len(tx)
    return _encode(
        table,
        {
            "transaction_id": _text(tx.transaction_id),
            "occurred_at": pa.array(tx.timestamp.astype("datetime64[us]"), type=UTC_MICROS),
            "customer_id": _text(tx.customer_id),
            "terminal_id": _text(tx.terminal_id),
            "merchant_category": _text(tx.merchant_category),
            "amount": pa.array(np.round(tx.amount.astype(np.float64), 2)).cast(AMOUNT),
            "currency": _text(tx.currency),
            "channel": _text(tx.channel),
            "terminal_lat": _float(tx.terminal_lat, np.float64),
            "terminal_lon": _float(tx.terminal_lon, np.float64),
            "received_at": _epoch_seconds(scored.received_at, n),
        },
    )


def decision_copy(scored: ScoredBatch, *, table: str = "decision") -> CopyData:
    n = len(scored)
    latency_ms = (scored.decided_at - scored.received_at) * 1000.0
    return _encode(
        table,
        {
            "transaction_id": _text(scored.transactions.transaction_id),
            "decided_at": _epoch_seconds(scored.decided_at, n),
            "probability": pa.array(np.asarray(scored.probability, dtype=np.float32)),
            "score": pa.array(np.asarray(scored.score, dtype=np.int16)),
            "decision": _text(scored.decision),
            "rule": _text(scored.rule),
            "reasons": _jsonb(scored.reasons_json()),
            "model_version": _repeated(scored.model_version, n),
            "features": _rows_as_bytea(np.asarray(scored.features, dtype="<f4")),
            "latency_ms": pa.array(latency_ms.astype(np.float32)),
        },
    )
