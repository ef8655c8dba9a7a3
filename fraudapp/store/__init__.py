"""PostgreSQL, the source of truth: connection pool, migrations and every query.

One typed async function per query, SQL inline with `$n` parameters, the connection or pool first.
Scored micro-batches arrive from the writer and go in with `COPY`, one commit per batch; reads for
the API and the dashboard aggregate in SQL.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import pandas as pd

from fraudapp.errors import ServiceUnreachable
from fraudapp.policy import ListEntry
from fraudapp.store import copy
from fraudapp.transactions import LABEL_COLUMNS, TRANSACTION_COLUMNS

if TYPE_CHECKING:
    from fraudapp.scoring import ScoredBatch

log = logging.getLogger(__name__)

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection
ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def migrate(url: str, *, revision: str = "head") -> None:
    """Run `alembic upgrade` to `revision` (blocking: call it from a thread)."""
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    command.upgrade(config, revision)


def downgrade(url: str, *, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    command.downgrade(config, revision)


async def create_pool(
    url: str, *, setting: str, timeout_seconds: float, max_size: int = 8
) -> asyncpg.Pool:
    """Open the pool, or raise `ServiceUnreachable` naming the setting and the address."""
    try:
        pool = await asyncio.wait_for(
            asyncpg.create_pool(
                url,
                min_size=2,
                max_size=max_size,
                command_timeout=60,
                server_settings={"application_name": "fraudapp"},
                reset=_keep_session,
            ),
            timeout=timeout_seconds,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        raise ServiceUnreachable(
            f"Cannot reach PostgreSQL at {redact(url)} (from {setting}): "
            f"{exc or type(exc).__name__}."
            f" Check that the server is running and the URL is right, or unset {setting} to use"
            " the embedded PostgreSQL."
        ) from exc
    assert pool is not None
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool as it is.

    asyncpg's default reset sends `RESET ALL; UNLISTEN *; ...` on every release: a second round
    trip for each query made through the pool. fraudapp sets no session state (no SET, LISTEN,
    advisory locks or open cursors); an open transaction is still rolled back by asyncpg.
    """


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def ping(db: Executor) -> bool:
    return bool(await db.fetchval("SELECT 1"))


async def schema_revision(db: Executor) -> str | None:
    try:
        return await db.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return None


def record_dict(record: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(record) if record is not None else None


# --- the writer's queries -------------------------------------------------------------------


async def insert_scored(conn: asyncpg.Connection, *, scored: ScoredBatch) -> int:
    """Store a scored micro-batch in one transaction; ids already stored are skipped.

    The fast path is a straight binary COPY into both tables; only when a batch holds an id that
    is already stored does it go through staging tables with ON CONFLICT DO NOTHING. Returns the
    rows stored.
    """
    try:
        async with conn.transaction():
            await _copy(conn, copy.transaction_copy(scored))
            await _copy(conn, copy.decision_copy(scored))
        return len(scored)
    except asyncpg.UniqueViolationError:
        return await _insert_scored_deduplicated(conn, scored)


async def _copy(conn: asyncpg.Connection, rows: copy.CopyData) -> None:
    # An async iterable, not a file: asyncpg reads a file object through the default thread
    # pool, a thread hop (and a GIL hand-over) per chunk of every COPY.
    async def data() -> AsyncIterator[bytes]:
        yield rows.data

    await conn.copy_to_table(rows.table, source=data(), columns=list(rows.columns), format="binary")


async def _insert_scored_deduplicated(conn: asyncpg.Connection, scored: ScoredBatch) -> int:
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS staged_transaction "
            "(LIKE transaction INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;"
            "CREATE TEMP TABLE IF NOT EXISTS staged_decision "
            "(LIKE decision INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await _copy(conn, copy.transaction_copy(scored, table="staged_transaction"))
        await _copy(conn, copy.decision_copy(scored, table="staged_decision"))
        inserted = await conn.fetch(
            """
            INSERT INTO transaction
            SELECT DISTINCT ON (transaction_id) * FROM staged_transaction
            ON CONFLICT ON CONSTRAINT transaction_pkey DO NOTHING
            RETURNING transaction_id
            """
        )
        ids = [r["transaction_id"] for r in inserted]
        await conn.execute(
            """
            INSERT INTO decision
            SELECT DISTINCT ON (transaction_id) * FROM staged_decision
            WHERE transaction_id = ANY($1::text[])
            """,
            ids,
        )
    return len(ids)


async def insert_truth(db: Executor, *, truth: pd.DataFrame) -> None:
    """The simulator's scenario of its frauds (transaction_id, scenario); never model input."""
    await db.execute(
        """
        INSERT INTO simulation_truth (transaction_id, scenario)
        SELECT * FROM unnest($1::text[], $2::smallint[])
        ON CONFLICT ON CONSTRAINT simulation_truth_pkey DO NOTHING
        """,
        truth["transaction_id"].tolist(),
        truth["scenario"].astype(int).tolist(),
    )


async def fetch_stored_ids(db: Executor, *, ids: Sequence[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT transaction_id FROM transaction WHERE transaction_id = ANY($1::text[])", ids
    )
    return {r["transaction_id"] for r in rows}


async def insert_labels(db: Executor, *, labels: pd.DataFrame) -> pd.DataFrame:
    """Store label events whose transaction is stored; return the stored ones (LABEL_COLUMNS)."""
    if labels.empty:
        return labels
    rows = await db.fetch(
        """
        INSERT INTO label (transaction_id, is_fraud, source, labelled_by, known_at)
        SELECT l.transaction_id, l.is_fraud, l.source, l.labelled_by, l.known_at
        FROM unnest($1::text[], $2::bool[], $3::text[], $4::text[], $5::timestamptz[])
             AS l(transaction_id, is_fraud, source, labelled_by, known_at)
        JOIN transaction t USING (transaction_id)
        RETURNING transaction_id
        """,
        labels["transaction_id"].tolist(),
        labels["is_fraud"].astype(bool).tolist(),
        labels["source"].tolist(),
        labels["labelled_by"].tolist() if "labelled_by" in labels else [None] * len(labels),
        pd.to_datetime(labels["known_at"], utc=True).dt.to_pydatetime().tolist(),
    )
    stored = {r["transaction_id"] for r in rows}
    return labels[labels["transaction_id"].isin(stored)]


async def iter_history(
    conn: asyncpg.Connection, *, since: datetime, chunk_rows: int = 100_000
) -> AsyncIterator[pd.DataFrame]:
    """Stored transactions from `since` in time order, a frame at a time (to rebuild state)."""
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(
            """
            SELECT transaction_id, occurred_at AS timestamp, customer_id, terminal_id,
                   coalesce(merchant_category, '') AS merchant_category,
                   amount::float8 AS amount, currency, channel,
                   coalesce(terminal_lat, 'NaN') AS terminal_lat,
                   coalesce(terminal_lon, 'NaN') AS terminal_lon
            FROM transaction
            WHERE occurred_at >= $1
            ORDER BY occurred_at, transaction_id
            """,
            since,
        )
        while rows := await cursor.fetch(chunk_rows):
            yield _frame(rows, TRANSACTION_COLUMNS)


async def fetch_known_labels(db: Executor, *, since: datetime) -> pd.DataFrame:
    """The latest verdict per transaction of those since `since`, in LABEL_COLUMNS."""
    rows = await db.fetch(
        """
        SELECT DISTINCT ON (l.transaction_id)
               l.transaction_id, t.occurred_at AS timestamp, t.customer_id, t.terminal_id,
               l.is_fraud, l.known_at, l.source
        FROM label l JOIN transaction t USING (transaction_id)
        WHERE t.occurred_at >= $1
        ORDER BY l.transaction_id, l.known_at DESC
        """,
        since,
    )
    return _frame(rows, LABEL_COLUMNS).sort_values("known_at", kind="stable")


async def newest_transaction_at(db: Executor) -> datetime | None:
    return await db.fetchval("SELECT max(occurred_at) FROM transaction")


def _frame(rows: Sequence[asyncpg.Record], columns: Sequence[str]) -> pd.DataFrame:
    frame = pd.DataFrame([tuple(r) for r in rows], columns=list(columns))
    for column in ("timestamp", "known_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


async def fetch_list_entries(db: Executor) -> list[ListEntry]:
    rows = await db.fetch("SELECT * FROM list_entry ORDER BY entry_id")
    return [ListEntry(**dict(r)) for r in rows]


async def upsert_list_entry(
    db: Executor,
    *,
    list_name: str,
    entity_type: str,
    entity_id: str,
    reason: str,
    created_by: str,
    expires_at: datetime | None,
) -> ListEntry:
    """Put an entity on a list, replacing its earlier entry (one entry per entity)."""
    row = await db.fetchrow(
        """
        INSERT INTO list_entry (list, entity_type, entity_id, reason, created_by, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT ON CONSTRAINT list_entry_entity_key DO UPDATE
        SET list = excluded.list, reason = excluded.reason, created_by = excluded.created_by,
            created_at = now(), expires_at = excluded.expires_at
        RETURNING *
        """,
        list_name,
        entity_type,
        entity_id,
        reason,
        created_by,
        expires_at,
    )
    return ListEntry(**dict(row))


async def delete_list_entry(db: Executor, *, entry_id: int) -> ListEntry | None:
    row = await db.fetchrow("DELETE FROM list_entry WHERE entry_id = $1 RETURNING *", entry_id)
    return ListEntry(**dict(row)) if row is not None else None


DECISION_ROW_SQL = """
    SELECT t.transaction_id, t.occurred_at, t.customer_id, t.terminal_id,
           t.amount::float8 AS amount, t.currency, t.channel, t.merchant_category,
           d.probability, d.score, d.decision, d.rule, d.reasons, d.model_version, d.latency_ms
    FROM decision d JOIN transaction t USING (transaction_id)
"""


def decision_row(record: asyncpg.Record) -> dict[str, Any]:
    """A stored decision in the same shape as `ScoredBatch.row`."""
    row = dict(record)
    row["timestamp"] = row.pop("occurred_at").isoformat()
    row["reasons"] = json.loads(row["reasons"])
    row["probability"] = float(row["probability"])
    row["latency_ms"] = float(row["latency_ms"])
    return row


async def fetch_decided_ids(db: Executor, *, ids: Sequence[str]) -> set[str]:
    rows = await db.fetch(
        "SELECT transaction_id FROM decision WHERE transaction_id = ANY($1::text[])", ids
    )
    return {r["transaction_id"] for r in rows}


async def fetch_decisions(db: Executor, *, ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = await db.fetch(DECISION_ROW_SQL + " WHERE transaction_id = ANY($1::text[])", ids)
    return [decision_row(r) for r in rows]
