"""What only the dashboard reads: its charts' and tiles' aggregations and the review queue.

Each aggregation reads the decisions made in a wall-clock window (`decided_at`, BRIN-indexed)
and returns a few dozen rows at most, whatever the traffic; the dashboard caches them for all
its viewers. The reads shared with the API (stats, volume series, transactions) are in `reads`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


async def count_decisions(db: Executor, *, since: datetime, until: datetime) -> dict[str, int]:
    """Decisions made in [since, until), by decision (approve / review / decline)."""
    rows = await db.fetch(
        """
        SELECT decision, count(*) AS n FROM decision
        WHERE decided_at >= $1 AND decided_at < $2
        GROUP BY decision
        """,
        since,
        until,
    )
    return {r["decision"]: int(r["n"]) for r in rows}


async def fetch_score_histogram(
    db: Executor, *, since: datetime, bins: int = 20
) -> list[dict[str, Any]]:
    """Decisions since `since` per score bin (`bins` equal bins over 0–99) and verdict.

    `verdict` is 'fraud' or 'legitimate' when a label is known (the latest one wins), else
    'unlabelled'. Only bins with decisions are returned.
    """
    rows = await db.fetch(
        """
        WITH recent AS (
            SELECT transaction_id, score FROM decision WHERE decided_at >= $1
        ), verdict AS (
            SELECT DISTINCT ON (l.transaction_id) l.transaction_id, l.is_fraud
            FROM label l JOIN recent USING (transaction_id)
            ORDER BY l.transaction_id, l.known_at DESC, l.label_id DESC
        )
        SELECT least(r.score * $2 / 100, $2 - 1) AS bin,
               CASE WHEN v.is_fraud THEN 'fraud'
                    WHEN NOT v.is_fraud THEN 'legitimate'
                    ELSE 'unlabelled' END AS verdict,
               count(*) AS n
        FROM recent r LEFT JOIN verdict v USING (transaction_id)
        GROUP BY 1, 2 ORDER BY 1, 2
        """,
        since,
        bins,
    )
    return [{"bin": int(r["bin"]), "verdict": r["verdict"], "n": int(r["n"])} for r in rows]


async def fetch_decision_mix(db: Executor, *, since: datetime) -> list[dict[str, Any]]:
    """Decisions since `since` by decision and the list rule that made them (None: the model)."""
    rows = await db.fetch(
        """
        SELECT decision, rule, count(*) AS n FROM decision
        WHERE decided_at >= $1
        GROUP BY decision, rule ORDER BY decision, rule NULLS FIRST
        """,
        since,
    )
    return [{"decision": r["decision"], "rule": r["rule"], "n": int(r["n"])} for r in rows]


async def fetch_reason_counts(
    db: Executor, *, since: datetime, limit: int = 10
) -> list[dict[str, Any]]:
    """The reason codes most often attached to reviews and declines since `since`."""
    rows = await db.fetch(
        """
        SELECT reason ->> 'code' AS code, reason ->> 'feature' AS feature, count(*) AS n
        FROM decision d CROSS JOIN LATERAL jsonb_array_elements(d.reasons) AS reason
        WHERE d.decision <> 'approve' AND d.decided_at >= $1
        GROUP BY 1, 2 ORDER BY n DESC, code LIMIT $2
        """,
        since,
        limit,
    )
    return [{"code": r["code"], "feature": r["feature"], "n": int(r["n"])} for r in rows]


async def fetch_amount_quantiles(db: Executor, *, since: datetime) -> list[dict[str, Any]]:
    """Amount quantiles (5, 25, 50, 75, 95 %) and mean per decision since `since`: a box plot
    drawn from five numbers per decision instead of every amount."""
    rows = await db.fetch(
        """
        SELECT d.decision, count(*) AS n, avg(t.amount)::float8 AS mean,
               percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95])
                   WITHIN GROUP (ORDER BY t.amount::float8) AS quantiles
        FROM decision d JOIN transaction t USING (transaction_id)
        WHERE d.decided_at >= $1
        GROUP BY d.decision ORDER BY d.decision
        """,
        since,
    )
    return [
        {
            "decision": r["decision"],
            "n": int(r["n"]),
            "mean": float(r["mean"]),
            "quantiles": [float(q) for q in r["quantiles"]],
        }
        for r in rows
    ]


async def fetch_labelled_scores(
    db: Executor, *, model_version: str, limit: int = 50_000
) -> list[tuple[float, bool]]:
    """(probability, is_fraud) of the latest labelled decisions made by `model_version`: the
    model's curves on live traffic, as far as labels are known."""
    rows = await db.fetch(
        """
        SELECT d.probability::float8 AS probability, v.is_fraud
        FROM decision d
        JOIN LATERAL (
            SELECT is_fraud FROM label l WHERE l.transaction_id = d.transaction_id
            ORDER BY l.known_at DESC, l.label_id DESC LIMIT 1
        ) v ON true
        WHERE d.model_version = $1
          AND d.transaction_id IN (SELECT transaction_id FROM label ORDER BY label_id DESC
                                   LIMIT $2)
        """,
        model_version,
        limit,
    )
    return [(float(r["probability"]), bool(r["is_fraud"])) for r in rows]


async def fetch_review_queue(
    db: Executor, *, limit: int = 50, candidates: int = 10_000
) -> list[dict[str, Any]]:
    """Transactions decided 'review' with no label yet, by expected loss (probability × amount),
    largest first, among the latest `candidates` reviews (read through the alert index, so
    the cost stays bounded however long the backlog)."""
    rows = await db.fetch(
        """
        WITH recent AS (
            SELECT transaction_id, decided_at, probability, score, reasons, model_version
            FROM decision WHERE decision = 'review'
            ORDER BY decided_at DESC LIMIT $2
        )
        SELECT t.transaction_id, t.occurred_at, t.customer_id, t.terminal_id,
               t.amount::float8 AS amount, t.currency, t.channel, d.decided_at,
               d.probability::float8 AS probability, d.score, d.reasons::text AS reasons,
               d.model_version, (d.probability * t.amount)::float8 AS expected_loss
        FROM recent d JOIN transaction t USING (transaction_id)
        WHERE NOT EXISTS (SELECT 1 FROM label l WHERE l.transaction_id = d.transaction_id)
        ORDER BY expected_loss DESC, t.transaction_id
        LIMIT $1
        """,
        limit,
        candidates,
    )
    queue = []
    for record in rows:
        row = dict(record)
        row["reasons"] = json.loads(row["reasons"])
        queue.append(row)
    return queue
