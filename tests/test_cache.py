"""The Redis cache against real Redis: which keys expire, and how the janitor prunes the rest."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from fraudapp import cache

PREFIX = "fraudapp:test:"


def risky(customer_id: str, *, decided_at: float) -> cache.RiskyCustomer:
    return cache.RiskyCustomer(
        customer_id, 91, "decline", f"tx-{customer_id}", 12.5, decided_at, ""
    )


async def test_only_customer_summaries_have_a_ttl_and_the_janitor_prunes_the_sorted_sets(
    redis_client: aioredis.Redis,
) -> None:
    now = time.time()
    await cache.record_batch(
        redis_client,
        prefix=PREFIX,
        ttl_seconds=600,
        risky={"old": risky("old", decided_at=now - 700), "new": risky("new", decided_at=now)},
        decision_counts={"approve": 5, "decline": 2},
    )
    assert 0 < await redis_client.ttl(cache.customer_key(PREFIX, "new")) <= 600
    for key in (cache.high_risk_key(PREFIX), cache.seen_key(PREFIX), cache.counters_key(PREFIX)):
        assert await redis_client.ttl(key) == -1, f"{key} has no TTL (see the module docstring)"

    assert await cache.expire_high_risk(redis_client, prefix=PREFIX, ttl_seconds=600) == 1
    assert await redis_client.zrange(cache.high_risk_key(PREFIX), 0, -1) == ["new"]
    assert await redis_client.zrange(cache.seen_key(PREFIX), 0, -1) == ["new"]
    assert await cache.fetch_counters(redis_client, prefix=PREFIX) == {"approve": 5, "decline": 2}
