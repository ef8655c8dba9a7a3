"""Reads for the API and the dashboard: one typed async function per query, aggregated in SQL.

Transactions and their decisions, label history, a customer's recent activity, high-risk
customers (the database's answer when Redis is down) and windowed statistics. Listing pages by
keyset on (occurred_at, transaction_id), newest first, so a page costs the same however deep.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from fraudapp.policy import ListEntry

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection

_TRANSACTION_COLUMNS = """
    t.transaction_id, t.occurred_at, t.customer_id, t.terminal_id, t.merchant_category,
    t.amount::float8 AS amount, t.currency, t.channel, t.terminal_lat, t.terminal_lon,
    t.received_at, d.decided_at, d.probability::float8 AS probability, d.score, d.decision,
    d.rule, d.reasons::text AS reasons, d.model_version, d.latency_ms::float8 AS latency_ms
"""
_TRANSACTION_SQL = f"""
    SELECT {_TRANSACTION_COLUMNS} FROM transaction t JOIN decision d USING (transaction_id)
"""


def _transaction(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    row["reasons"] = json.loads(row["reasons"])
    return row


async def fetch_transaction(db: Executor, *, transaction_id: str) -> dict[str, Any] | None:
    """One stored transaction with its decision, plus the raw `features` bytes."""
    record = await db.fetchrow(
        f"""
        SELECT {_TRANSACTION_COLUMNS}, d.features
        FROM transaction t JOIN decision d USING (transaction_id)
        WHERE t.transaction_id = $1
        """,
        transaction_id,
    )
    return _transaction(record) if record is not None else None


async def fetch_label_target(db: Executor, *, transaction_id: str) -> dict[str, Any] | None:
    """What a label event needs of its transaction: occurred_at, customer_id, terminal_id."""
    record = await db.fetchrow(
        "SELECT occurred_at, customer_id, terminal_id FROM transaction WHERE transaction_id = $1",
        transaction_id,
    )
    return dict(record) if record is not None else None


async def fetch_labels(db: Executor, *, transaction_id: str) -> list[dict[str, Any]]:
    """Every verdict on a transaction, latest known first (the first one is in force)."""
    rows = await db.fetch(
        """
        SELECT label_id, is_fraud, source, labelled_by, known_at, created_at
        FROM label WHERE transaction_id = $1
        ORDER BY known_at DESC, label_id DESC
        """,
        transaction_id,
    )
    return [dict(r) for r in rows]


async def list_transactions(
    db: Executor,
    *,
    customer_id: str | None = None,
    terminal_id: str | None = None,
    decision: str | None = None,
    min_score: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Transactions newest first (by occurred_at, then id), filtered; `before` is the keyset
    position of the previous page's last row. Only the filters given enter the SQL, so each
    combination gets a plan that can use its index."""
    conditions: list[str] = []
    args: list[Any] = []

    def where(sql: str, *values: Any) -> None:
        for value in values:
            args.append(value)
            sql = sql.replace("?", f"${len(args)}", 1)
        conditions.append(sql)

    if customer_id is not None:
        where("t.customer_id = ?", customer_id)
    if terminal_id is not None:
        where("t.terminal_id = ?", terminal_id)
    if decision is not None:
        where("d.decision = ?", decision)
    if min_score is not None:
        where("d.score >= ?", min_score)
    if since is not None:
        where("t.occurred_at >= ?", since)
    if until is not None:
        where("t.occurred_at < ?", until)
    if before is not None:
        where("(t.occurred_at, t.transaction_id) < (?, ?)", *before)
    sql = _TRANSACTION_SQL
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    args.append(limit)
    sql += f" ORDER BY t.occurred_at DESC, t.transaction_id DESC LIMIT ${len(args)}"
    return [_transaction(r) for r in await db.fetch(sql, *args)]


async def fetch_score_history(
    db: Executor, *, customer_id: str, limit: int = 200
) -> list[dict[str, Any]]:
    """A customer's latest scores, oldest first (a chart's x axis)."""
    rows = await db.fetch(
        """
        SELECT occurred_at, transaction_id, score, decision FROM (
            SELECT t.occurred_at, t.transaction_id, d.score, d.decision
            FROM transaction t JOIN decision d USING (transaction_id)
            WHERE t.customer_id = $1
            ORDER BY t.occurred_at DESC LIMIT $2
        ) latest ORDER BY occurred_at
        """,
        customer_id,
        limit,
    )
    return [dict(r) for r in rows]


async def fetch_customer_summary(db: Executor, *, customer_id: str) -> dict[str, Any]:
    """Counts over a customer's whole stored history: transactions, alerts, known frauds."""
    row = await db.fetchrow(
        """
        SELECT count(*) AS transactions,
               count(*) FILTER (WHERE d.decision <> 'approve') AS alerts,
               coalesce(sum(t.amount), 0)::float8 AS amount,
               min(t.occurred_at) AS first_seen, max(t.occurred_at) AS last_seen,
               count(*) FILTER (WHERE l.is_fraud) AS known_frauds
        FROM transaction t JOIN decision d USING (transaction_id)
        LEFT JOIN LATERAL (
            SELECT is_fraud FROM label WHERE label.transaction_id = t.transaction_id
            ORDER BY known_at DESC, label_id DESC LIMIT 1
        ) l ON true
        WHERE t.customer_id = $1
        """,
        customer_id,
    )
    return dict(row) if row is not None else {}


async def fetch_high_risk(
    db: Executor, *, since: datetime, limit: int, min_score: int = 0
) -> list[dict[str, Any]]:
    """Customers with a risky decision since `since`, each with their riskiest, highest first:
    what the Redis cache holds, recomputed from the source of truth."""
    rows = await db.fetch(
        """
        SELECT customer_id, score, decision, transaction_id, amount,
               extract(epoch FROM decided_at)::float8 AS decided_at, reason
        FROM (
            SELECT DISTINCT ON (t.customer_id)
                   t.customer_id, d.score, d.decision, t.transaction_id,
                   t.amount::float8 AS amount, d.decided_at,
                   coalesce(d.reasons -> 0 ->> 'text', d.rule, '') AS reason
            FROM decision d JOIN transaction t USING (transaction_id)
            WHERE d.decision <> 'approve' AND d.decided_at >= $1 AND d.score >= $2
            ORDER BY t.customer_id, d.score DESC, d.decided_at DESC
        ) riskiest
        ORDER BY score DESC, decided_at DESC
        LIMIT $3
        """,
        since,
        min_score,
        limit,
    )
    return [dict(r) for r in rows]


async def fetch_stats(db: Executor, *, since: datetime, buckets: int = 10) -> dict[str, Any]:
    """Decisions made since `since` (wall clock, `decided_at`): volume, decision mix, latency
    percentiles, known labels and a score histogram of `buckets` equal bins over 0–99."""
    row = await db.fetchrow(
        """
        WITH recent AS (
            SELECT transaction_id, decided_at, score, decision, latency_ms
            FROM decision WHERE decided_at >= $1
        ), verdict AS (
            SELECT DISTINCT ON (l.transaction_id) l.transaction_id, l.is_fraud
            FROM label l JOIN recent USING (transaction_id)
            ORDER BY l.transaction_id, l.known_at DESC, l.label_id DESC
        ), histogram AS (
            SELECT array_agg(coalesce(n, 0) ORDER BY b) AS counts
            FROM generate_series(0, $2 - 1) AS b
            LEFT JOIN (
                SELECT least(score * $2 / 100, $2 - 1) AS bin, count(*) AS n
                FROM recent GROUP BY 1
            ) binned ON binned.bin = b
        )
        SELECT count(*) AS volume,
               count(*) FILTER (WHERE decision = 'approve') AS approve,
               count(*) FILTER (WHERE decision = 'review') AS review,
               count(*) FILTER (WHERE decision = 'decline') AS decline,
               min(decided_at) AS first_decided_at, max(decided_at) AS last_decided_at,
               percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms)
                   AS latency_ms,
               avg(score)::float8 AS mean_score,
               (SELECT count(*) FROM verdict) AS labelled,
               (SELECT count(*) FILTER (WHERE is_fraud) FROM verdict) AS frauds,
               (SELECT counts FROM histogram) AS histogram
        FROM recent
        """,
        since,
        buckets,
    )
    assert row is not None
    return dict(row)


async def fetch_volume_series(
    db: Executor, *, since: datetime, bucket_seconds: int
) -> list[dict[str, Any]]:
    """Decisions per time bucket since `since` (wall clock), with the alerts among them."""
    rows = await db.fetch(
        """
        SELECT date_bin(make_interval(secs => $2), decided_at, $1) AS bucket,
               count(*) AS volume,
               count(*) FILTER (WHERE decision <> 'approve') AS alerts
        FROM decision WHERE decided_at >= $1
        GROUP BY 1 ORDER BY 1
        """,
        since,
        bucket_seconds,
    )
    return [dict(r) for r in rows]


async def fetch_list_entries(
    db: Executor,
    *,
    list_name: str | None = None,
    entity_type: str | None = None,
    active_at: datetime | None = None,
) -> list[ListEntry]:
    """List entries, newest first; with `active_at`, only those not expired by then."""
    rows = await db.fetch(
        """
        SELECT * FROM list_entry
        WHERE ($1::text IS NULL OR list = $1)
          AND ($2::text IS NULL OR entity_type = $2)
          AND ($3::timestamptz IS NULL OR expires_at IS NULL OR expires_at > $3)
        ORDER BY entry_id DESC
        """,
        list_name,
        entity_type,
        active_at,
    )
    return [ListEntry(**dict(r)) for r in rows]


async def fetch_entity_list_entries(
    db: Executor, *, entities: Sequence[tuple[str, str]]
) -> list[ListEntry]:
    """The entries, if any, of the given (entity_type, entity_id) pairs."""
    if not entities:
        return []
    rows = await db.fetch(
        """
        SELECT e.* FROM list_entry e
        JOIN unnest($1::text[], $2::text[]) AS q(entity_type, entity_id)
          USING (entity_type, entity_id)
        ORDER BY e.entry_id
        """,
        [t for t, _ in entities],
        [i for _, i in entities],
    )
    return [ListEntry(**dict(r)) for r in rows]
