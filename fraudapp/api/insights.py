"""What the API tells about activity: a customer's picture, high-risk customers, statistics.

Counts and percentiles are aggregated in SQL (`store.reads`); current feature values are read
on the scoring thread, where the feature state lives; high-risk customers come from Redis, or
from PostgreSQL when Redis does not answer (the response says which).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field
from redis.exceptions import RedisError

from fraudapp import cache
from fraudapp.api.responses import errors
from fraudapp.api.transactions import Decision, TransactionOut, transaction_out
from fraudapp.auth import ReaderDep
from fraudapp.deps import RuntimeDep
from fraudapp.errors import NotFound
from fraudapp.lifespan import Runtime
from fraudapp.policy import ListEntry
from fraudapp.store import reads

log = logging.getLogger(__name__)
router = APIRouter(tags=["insights"])

REDIS_TIMEOUT_SECONDS = 1.0
RECENT_TRANSACTIONS = 20


class ListEntryOut(BaseModel):
    entry_id: int
    list: Literal["block", "allow"]
    entity_type: Literal["customer", "terminal"]
    entity_id: str
    reason: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    active: bool = Field(description="not expired")


def list_entry_out(entry: ListEntry, now: datetime | None = None) -> dict[str, Any]:
    return {
        "entry_id": entry.entry_id,
        "list": entry.list,
        "entity_type": entry.entity_type,
        "entity_id": entry.entity_id,
        "reason": entry.reason,
        "created_by": entry.created_by,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "active": entry.active(now or datetime.now(UTC)),
    }


class HighRiskFlag(BaseModel):
    flagged: bool | None = Field(description="in the Redis high-risk set (None: Redis is down)")
    score: int | None
    source: Literal["redis", "unavailable"]


class ScorePoint(BaseModel):
    timestamp: datetime
    transaction_id: str
    score: int
    decision: Decision


class CustomerOut(BaseModel):
    customer_id: str
    transactions: int
    alerts: int
    known_frauds: int
    amount: float
    first_seen: datetime | None
    last_seen: datetime | None
    features: dict[str, float] | None = Field(
        description="current feature-state values (None when the state does not know them)"
    )
    high_risk: HighRiskFlag
    lists: list[ListEntryOut]
    recent_transactions: list[TransactionOut]
    score_history: list[ScorePoint] = Field(description="latest scores, oldest first")


@router.get(
    "/customers/{customer_id}",
    summary="A customer: recent activity, current features, scores, high-risk flag, lists",
    response_model=CustomerOut,
    responses=errors(401, 404, 422),
)
async def get_customer(
    runtime: RuntimeDep,
    principal: ReaderDep,
    customer_id: Annotated[str, Path(max_length=64)],
) -> Any:
    pool = runtime.pool
    summary = await reads.fetch_customer_summary(pool, customer_id=customer_id)
    features = await customer_features(runtime, customer_id, summary.get("last_seen"))
    if not summary.get("transactions") and features is None:
        raise NotFound(f"customer {customer_id!r} has no stored transactions")
    recent = await reads.list_transactions(pool, customer_id=customer_id, limit=RECENT_TRANSACTIONS)
    history = await reads.fetch_score_history(pool, customer_id=customer_id)
    entries = await reads.fetch_entity_list_entries(pool, entities=[("customer", customer_id)])
    now = datetime.now(UTC)
    return {
        "customer_id": customer_id,
        **summary,
        "features": features,
        "high_risk": await high_risk_flag(runtime, customer_id),
        "lists": [list_entry_out(e, now) for e in entries],
        "recent_transactions": [transaction_out(r) for r in recent],
        "score_history": [{**p, "timestamp": p.pop("occurred_at")} for p in history],
    }


async def customer_features(
    runtime: Runtime, customer_id: str, last_seen: datetime | None
) -> dict[str, float] | None:
    """The customer's window values now, read on the scoring thread (None before the state
    exists or for a customer it has not seen)."""
    pipeline = runtime.engine.pipeline
    if pipeline is None:
        return None
    now = datetime.now(UTC)
    # The simulator's clock may run ahead of the wall clock: windows end at the later of both.
    at = max(now, last_seen) if last_seen is not None else now
    snapshot: dict[str, float] | None = await pipeline.run_on_scoring_thread(
        pipeline.scorer.state.customer_snapshot, customer_id, at
    )
    return snapshot


async def high_risk_flag(runtime: Runtime, customer_id: str) -> dict[str, Any]:
    prefix = runtime.settings.cache_key_prefix
    try:
        score = await asyncio.wait_for(
            runtime.redis.zscore(cache.high_risk_key(prefix), customer_id), REDIS_TIMEOUT_SECONDS
        )
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("api.redis_unavailable error=%s", exc)
        return {"flagged": None, "score": None, "source": "unavailable"}
    return {
        "flagged": score is not None,
        "score": None if score is None else int(score),
        "source": "redis",
    }


class HighRiskCustomer(BaseModel):
    customer_id: str
    score: int
    decision: Decision | None
    transaction_id: str | None
    amount: float
    decided_at: datetime
    reason: str


class HighRiskOut(BaseModel):
    source: Literal["redis", "database"] = Field(description="which store answered")
    cache_error: str | None = Field(description="why Redis did not answer, if it did not")
    customers: list[HighRiskCustomer]


@router.get(
    "/alerts/high-risk",
    summary="High-risk customers: Redis, or PostgreSQL when Redis is down",
    response_model=HighRiskOut,
    responses=errors(401, 422),
)
async def get_high_risk(
    runtime: RuntimeDep,
    principal: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    min_score: Annotated[int, Query(ge=0, le=99)] = 0,
) -> Any:
    settings = runtime.settings
    try:
        customers = await asyncio.wait_for(
            cache.fetch_high_risk(
                runtime.redis, prefix=settings.cache_key_prefix, limit=limit, min_score=min_score
            ),
            REDIS_TIMEOUT_SECONDS,
        )
        source, error = "redis", None
    except (RedisError, OSError, TimeoutError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        log.warning("api.high_risk_fallback error=%s", error)
        since = datetime.now(UTC) - timedelta(seconds=settings.cache_ttl_seconds)
        customers = await reads.fetch_high_risk(
            runtime.pool, since=since, limit=limit, min_score=min_score
        )
        source = "database"
    return {
        "source": source,
        "cache_error": error,
        "customers": [
            {**c, "decided_at": datetime.fromtimestamp(float(str(c["decided_at"])), UTC)}
            for c in customers
        ],
    }


WINDOWS: dict[str, timedelta] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
Window = Literal["15m", "1h", "24h", "7d"]
SERIES_POINTS = 60


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class HistogramBin(BaseModel):
    min_score: int
    max_score: int
    count: int


class SeriesPoint(BaseModel):
    bucket: datetime
    volume: int
    alerts: int


class StatsOut(BaseModel):
    window: Window
    since: datetime
    until: datetime
    volume: int = Field(description="decisions made in the window (wall clock)")
    decisions: dict[str, int] = Field(description="approve / review / decline counts")
    alert_rate: float | None = Field(description="share reviewed or declined")
    decline_rate: float | None
    labelled: int = Field(description="decisions whose transaction has a known label")
    frauds: int
    fraud_rate: float | None = Field(description="frauds / labelled (None when none labelled)")
    mean_score: float | None
    score_histogram: list[HistogramBin]
    throughput_tps: float = Field(description="decisions per second over the window")
    latency_ms: Percentiles = Field(description="received → decided, percentile_cont in SQL")
    series: list[SeriesPoint] = Field(description="decisions per time bucket")
    pipeline: dict[str, Any] = Field(description="live pipeline figures (last seconds)")


@router.get(
    "/stats",
    summary="Volume, rates, score histogram, throughput and latency over a window",
    response_model=StatsOut,
    responses=errors(401, 422),
)
async def get_stats(runtime: RuntimeDep, principal: ReaderDep, window: Window = "1h") -> Any:
    span = WINDOWS[window]
    until = datetime.now(UTC)
    since = until - span
    row = await reads.fetch_stats(runtime.pool, since=since, buckets=10)
    series = await reads.fetch_volume_series(
        runtime.pool, since=since, bucket_seconds=int(span.total_seconds()) // SERIES_POINTS
    )
    volume = int(row["volume"])
    labelled, frauds = int(row["labelled"]), int(row["frauds"])
    latency = row["latency_ms"] or [None, None, None]
    return {
        "window": window,
        "since": since,
        "until": until,
        "volume": volume,
        "decisions": {name: int(row[name]) for name in ("approve", "review", "decline")},
        "alert_rate": (row["review"] + row["decline"]) / volume if volume else None,
        "decline_rate": row["decline"] / volume if volume else None,
        "labelled": labelled,
        "frauds": frauds,
        "fraud_rate": frauds / labelled if labelled else None,
        "mean_score": row["mean_score"],
        "score_histogram": [
            {"min_score": 10 * i, "max_score": 10 * i + 9, "count": int(n)}
            for i, n in enumerate(row["histogram"])
        ],
        "throughput_tps": volume / span.total_seconds(),
        "latency_ms": dict(zip(("p50", "p95", "p99"), latency, strict=True)),
        "series": series,
        "pipeline": live_pipeline(runtime),
    }


def live_pipeline(runtime: Runtime) -> dict[str, Any]:
    report = runtime.engine.pipeline_report()
    keys = (
        "ready",
        "state",
        "throughput_tps",
        "latency_ms",
        "queue_depth",
        "queue_max",
        "committed",
        "model_version",
        "database_error",
        "cache_error",
    )
    return {key: report[key] for key in keys if key in report}
