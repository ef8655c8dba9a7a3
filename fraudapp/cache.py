"""Redis: the live cache of high-risk customers and the live decision counters.

An optimisation that fails open: the pipeline catches the `RedisError` of a write here, logs a
warning and retries later, so scoring never stops for Redis; PostgreSQL stays the source of
truth. Keys carry a versioned prefix from settings. Only the customer summaries
(`customer:<id>`) have a Redis TTL, `FRAUDAPP_CACHE_TTL_SECONDS`, renewed at each write of the
customer's latest risky decision. The sorted sets `high_risk` and `high_risk:seen` have none: the
pipeline's janitor (`expire_high_risk`) removes a customer from both once that decision is older
than the TTL. `counters` never expires: running totals since the key was created, one field per
decision, so it stays small.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fraudapp.errors import ServiceUnreachable

if TYPE_CHECKING:
    from fraudapp.scoring import ScoredBatch

log = logging.getLogger(__name__)


async def create_redis(url: str, *, setting: str, timeout_seconds: float) -> aioredis.Redis:
    """Connect and ping, or raise `ServiceUnreachable` naming the setting and the address."""
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_seconds,
        socket_timeout=5,
        health_check_interval=30,
        decode_responses=True,
    )
    try:
        await asyncio.wait_for(client.ping(), timeout=timeout_seconds)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise ServiceUnreachable(
            f"Cannot reach Redis at {url} (from {setting}): {exc or type(exc).__name__}."
            f" Check that the server is running and the URL is right, or unset {setting} to use"
            " the embedded Redis."
        ) from exc
    return client


async def ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=2))
    except (RedisError, OSError, TimeoutError):
        return False


# --- keys -------------------------------------------------------------------------------------
def high_risk_key(prefix: str) -> str:
    return f"{prefix}high_risk"


def seen_key(prefix: str) -> str:
    return f"{prefix}high_risk:seen"


def customer_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}customer:{customer_id}"


def counters_key(prefix: str) -> str:
    return f"{prefix}counters"


@dataclass(frozen=True, slots=True)
class RiskyCustomer:
    """The latest risky decision of a customer, as cached."""

    customer_id: str
    score: int
    decision: str
    transaction_id: str
    amount: float
    decided_at: float
    reason: str


def risky_customers(scored: ScoredBatch) -> dict[str, RiskyCustomer]:
    """The batch's risky customers, the highest score of each."""
    found: dict[str, RiskyCustomer] = {}
    tx = scored.transactions
    for i in scored.risky:
        customer = tx.customer_id[i]
        score = int(scored.score[i])
        if customer in found and found[customer].score >= score:
            continue
        reasons = scored.reasons[i]
        found[customer] = RiskyCustomer(
            customer_id=customer,
            score=score,
            decision=scored.decision[i],
            transaction_id=tx.transaction_id[i],
            amount=float(tx.amount[i]),
            decided_at=float(scored.decided_at[i]),
            reason=str(reasons[0]["text"]) if reasons else str(scored.rule[i] or ""),
        )
    return found


async def record_batch(
    client: aioredis.Redis,
    *,
    prefix: str,
    ttl_seconds: int,
    risky: dict[str, RiskyCustomer],
    decision_counts: dict[str, int],
) -> None:
    """One round trip: risky customers into the sorted set and their summaries, plus counters.

    Raises RedisError; the caller keeps what could not be written and retries later.
    """
    async with client.pipeline(transaction=False) as pipe:
        if risky:
            pipe.zadd(high_risk_key(prefix), {c: r.score for c, r in risky.items()}, gt=True)
            pipe.zadd(seen_key(prefix), {c: r.decided_at for c, r in risky.items()})
            for customer, summary in risky.items():
                key = customer_key(prefix, customer)
                fields: dict[Any, Any] = asdict(summary)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, ttl_seconds)
        for decision, count in decision_counts.items():
            pipe.hincrby(counters_key(prefix), decision, count)
        await pipe.execute()


_EXPIRE_SCRIPT = """
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 5000)
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
return #old
"""


async def expire_high_risk(client: aioredis.Redis, *, prefix: str, ttl_seconds: int) -> int:
    """Drop customers whose last risky decision is older than the TTL; returns how many."""
    cutoff = time.time() - ttl_seconds
    removed = await client.eval(_EXPIRE_SCRIPT, 2, high_risk_key(prefix), seen_key(prefix), cutoff)
    return int(removed)


async def fetch_high_risk(
    client: aioredis.Redis, *, prefix: str, limit: int, min_score: int = 0
) -> list[dict[str, object]]:
    """The riskiest cached customers, highest score first, with their latest risky decision."""
    members: list[tuple[str, float]] = await client.zrevrangebyscore(  # type: ignore[assignment]
        high_risk_key(prefix), "+inf", min_score, start=0, num=limit, withscores=True
    )
    if not members:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for customer, _ in members:
            pipe.hgetall(customer_key(prefix, customer))
        summaries = await pipe.execute()
    result = []
    for (customer, score), summary in zip(members, summaries, strict=True):
        if not summary:  # its summary expired: the customer is no longer high-risk
            continue
        result.append(
            {
                "customer_id": customer,
                "score": int(score),
                "decision": summary.get("decision"),
                "transaction_id": summary.get("transaction_id"),
                "amount": float(summary.get("amount", 0)),
                "decided_at": float(summary.get("decided_at", 0)),
                "reason": summary.get("reason", ""),
            }
        )
    return result


async def fetch_counters(client: aioredis.Redis, *, prefix: str) -> dict[str, int]:
    values = await client.hgetall(counters_key(prefix))
    return {str(k): int(v) for k, v in values.items()}
